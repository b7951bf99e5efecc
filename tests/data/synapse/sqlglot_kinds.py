"""Parses T-SQL scripts with sqlglot's tsql dialect, strictly, and prints each statement's kind.

Input (stdin): a JSON list of {"name": ..., "sql": ...}. Output (stdout): a JSON object
{"version": sqlglot version, "scripts": {name: [kind, ...]}}, where a kind is the sqlglot
expression class of a statement ("Create", "Copy", "Update", ...), statements inside an IF's block
flattened after their "IfBlock", and a statement sqlglot cannot model given as
"Command:<its first two words>" so the caller decides which of those it accepts. A syntax error
exits non-zero with sqlglot's message (error_level=RAISE).
"""

import json
import sys

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel


def kinds(node, out):
    if node is None:
        return
    if isinstance(node, exp.IfBlock):
        out.append("IfBlock")
        for branch in ("true", "false"):
            block = node.args.get(branch)
            if isinstance(block, exp.Block):
                for stmt in block.expressions:
                    kinds(stmt, out)
            elif isinstance(block, exp.Expression):
                kinds(block, out)
    elif isinstance(node, exp.Block):
        for stmt in node.expressions:
            kinds(stmt, out)
    elif isinstance(node, exp.Command):
        words = (str(node.this) + " " + str(node.expression or "")).split()
        out.append("Command:" + " ".join(w.upper() for w in words[:2]))
    else:
        out.append(type(node).__name__)


def main():
    scripts = json.load(sys.stdin)
    result = {"version": sqlglot.__version__, "scripts": {}}
    for script in scripts:
        out = []
        try:
            for statement in sqlglot.parse(script["sql"], read="tsql", error_level=ErrorLevel.RAISE):
                kinds(statement, out)
        except sqlglot.errors.ParseError as e:
            print(f"{script['name']}: {e}", file=sys.stderr)
            sys.exit(2)
        result["scripts"][script["name"]] = out
    json.dump(result, sys.stdout)


main()
