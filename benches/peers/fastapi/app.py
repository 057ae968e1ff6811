"""The original FastAPI lesson: a public route and a token-protected route.

Run: uvicorn app:app --host 127.0.0.1 --port 8004 --workers 1
"""

from fastapi import Depends, FastAPI, Header, HTTPException

app = FastAPI()

SECRET_TOKEN = "mysecrettoken"


def verify_token(x_token: str = Header(None)):
    if x_token != SECRET_TOKEN:
        raise HTTPException(status_code=401, detail="Unauthorized")


@app.get("/public")
def public_route():
    return {"message": "Welcome to the public route!"}


@app.get("/protected", dependencies=[Depends(verify_token)])
def protected_route():
    return {"message": "You have access to the protected route!"}
