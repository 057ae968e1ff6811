"""tokengate's measurement kit: what every script in scripts/ shares.

* `common` — the repository's paths, logging, processes started and stopped by PID, servers on
  ports the OS picks when they bind (a server binds 127.0.0.1:0 and announces its address, or
  inherits a socket the kit bound), and the result folders benches/results/<date>-<what>/.
* `load` — the load generators (wrk, h2load, oha) and their figures.

The scripts put scripts/ on sys.path and import `from kit import common, load`.
"""
