// A table cut in two by a blank line: GitHub renders the rows after the blank line as text.
// Every line that starts with "|" outside a code block must belong to a table.
"use strict";

module.exports = {
  names: ["tokengate-split-table"],
  description: "Table rows outside a table (a table split by a blank line)",
  tags: ["table"],
  parser: "micromark",
  function: (params, onError) => {
    const inTable = new Set();
    const inCode = new Set();
    const walk = (tokens) => {
      for (const token of tokens) {
        const target =
          token.type === "table" ? inTable
            : token.type === "codeFenced" || token.type === "codeIndented" || token.type === "htmlFlow" ? inCode
              : null;
        if (target) {
          for (let line = token.startLine; line <= token.endLine; line++) {
            target.add(line);
          }
        }
        if (token.children) {
          walk(token.children);
        }
      }
    };
    walk(params.parsers.micromark.tokens);
    params.lines.forEach((text, index) => {
      const line = index + 1;
      if (text.trimStart().startsWith("|") && !inTable.has(line) && !inCode.has(line)) {
        onError({ lineNumber: line, detail: "a row outside a table: is a blank line splitting the table?" });
      }
    });
  },
};
