"""Convert onnx-tensorrt's docs/operators.md into f3compile/exporters/tensorrt_operators.json.

    git -C ONNX_TENSORRT show 10.1-GA:docs/operators.md > operators.md
    python tools/make_trt_operator_table.py operators.md --commit HASH [--branch 10.1-GA] \
        [-o f3compile/exporters/tensorrt_operators.json]

Every row of the "Operator Support Matrix" becomes one entry, verbatim: `supported` is the
"Supported" column (Y/N), `types` the "Supported Types" column split on commas (empty items
dropped), `restrictions` the "Restrictions" column ("" when absent). The TensorRT version and
the opset range come from the file's first sentence ("TensorRT X supports operators in the
inclusive range of opset A to opset B"). Nothing is added that the file does not say, except
`errata`: spellings in the types column that are not a TensorRT data type are kept as written
in `types_as_written` and listed in `errata` with the type they evidently mean.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# type names the file itself lists ("TensorRT supports the following ONNX data types: ...") use
# FLOAT32 there but FP32 in the matrix; these are the names the matrix uses
KNOWN_TYPES = {"FP32", "FP16", "BF16", "FP8", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL", "DOUBLE"}
ERRATA = {"INF64": "INT64"}  # a typo in the ConstantOfShape row (10.0-GA .. 10.1-GA)

HEADER = re.compile(r"TensorRT (\d+(?:\.\d+)*) supports operators in the inclusive range of opset (\d+) to opset (\d+)")


def parse(text: str) -> dict:
    match = HEADER.search(text)
    if match is None:
        raise SystemExit("operators.md: cannot find 'TensorRT X supports operators in the inclusive range of opset A to opset B'")
    tensorrt, low, high = match.group(1), int(match.group(2)), int(match.group(3))
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("| Operator"))
    except StopIteration:
        raise SystemExit("operators.md: no '| Operator | Supported | ...' table") from None
    operators: dict[str, dict] = {}
    errata = []
    for line in lines[start + 2:]:  # skip the header and the |---| rule
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        cells += [""] * (4 - len(cells))
        name, supported, types, restrictions = cells[0], cells[1], cells[2], "|".join(cells[3:]).strip(" |")
        if not name:
            continue
        if name in operators:
            raise SystemExit(f"operators.md: {name} appears twice")
        if supported not in ("Y", "N"):
            raise SystemExit(f"operators.md: {name}: Supported is {supported!r}, expected Y or N")
        written = [t.strip() for t in types.split(",") if t.strip()]
        entry = {"supported": supported == "Y", "types": [ERRATA.get(t, t) for t in written], "restrictions": restrictions}
        for t in written:
            if t in ERRATA:
                errata.append({"op": name, "written": t, "means": ERRATA[t]})
            elif t not in KNOWN_TYPES:
                raise SystemExit(f"operators.md: {name}: unknown type {t!r}; add it to KNOWN_TYPES or ERRATA")
        if written != entry["types"]:
            entry["types_as_written"] = written
        operators[name] = entry
    if not operators:
        raise SystemExit("operators.md: the operator table is empty")
    return {"tensorrt": tensorrt, "opset_range": [low, high], "operators": dict(sorted(operators.items())),
            "errata": errata}


def dump(table: dict) -> str:
    """JSON with one line per operator (readable diffs when the table is regenerated)."""
    head = {k: v for k, v in table.items() if k not in ("operators", "errata")}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    lines.append(' "errata": [' + ", ".join(json.dumps(e) for e in table["errata"]) + "],")
    lines.append(' "operators": {')
    rows = [f"  {json.dumps(name)}: {json.dumps(entry, ensure_ascii=False)}" for name, entry in table["operators"].items()]
    lines.append(",\n".join(rows))
    lines += [" }", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == table
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("operators_md", type=Path, help="the text of onnx-tensorrt docs/operators.md")
    parser.add_argument("--commit", required=True, help="the onnx-tensorrt commit the file was read at")
    parser.add_argument("--branch", default=None, help="the onnx-tensorrt branch or tag of that commit")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    parsed = parse(args.operators_md.read_text(encoding="utf-8"))
    table = {"source": "onnx/onnx-tensorrt docs/operators.md", "commit": args.commit}
    if args.branch:
        table["branch"] = args.branch
    table.update(parsed)
    text = dump(table)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"{args.output}: {len(table['operators'])} operators "
              f"({sum(e['supported'] for e in table['operators'].values())} supported), TensorRT {table['tensorrt']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
