"""Convert the NIST StRD nonlinear-regression .dat files into tests/data/nist_strd.json.

Usage: python tools/nist_strd_to_json.py DIR_WITH_DAT_FILES > tests/data/nist_strd.json

The .dat files are the ones published by NIST at https://www.itl.nist.gov/div898/strd/nls/
(the same files are kept in public repositories, e.g. lmfit-py's NIST_STRD/ folder). This script
keeps what the tests need: the model line, the data (y and x, or y, x1, x2 for Nelson), both
starting values, the certified parameters and the certified residual sum of squares.
"""
import json
import re
import sys
from pathlib import Path

NAMES = ["Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood", "Misra1b", "Kirby2",
         "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3", "Misra1c", "Misra1d", "Roszman1", "ENSO",
         "MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5"]


def parse(path: Path) -> dict:
    lines = path.read_text().splitlines()
    level = next(ln.strip().split(" Level")[0] for ln in lines if "Level of Difficulty" in ln)
    params = [ln.split() for ln in lines if re.match(r"^\s*b\d+\s*=", ln)]
    start1 = [float(p[2]) for p in params]
    start2 = [float(p[3]) for p in params]
    cert = [float(p[4]) for p in params]
    rss = float(next(ln.split(":")[1] for ln in lines if ln.startswith("Residual Sum of Squares")))
    i = next(k for k, ln in enumerate(lines) if re.match(r"^Data:\s+y\s", ln))
    rows = [[float(v) for v in ln.split()] for ln in lines[i + 1:] if ln.strip()]
    cols = list(zip(*rows))
    return {"level": level, "start1": start1, "start2": start2, "certified": cert, "rss": rss,
            "y": list(cols[0]), "x": [list(c) for c in cols[1:]] if len(cols) > 2 else list(cols[1])}


def main(folder: str) -> None:
    out = {"source": "NIST/ITL Statistical Reference Datasets (StRD), nonlinear regression, "
                     "https://www.itl.nist.gov/div898/strd/nls/nls_main.shtml; the .dat files as published "
                     "by NIST, converted by tools/nist_strd_to_json.py",
           "problems": {name: parse(Path(folder) / f"{name}.dat") for name in NAMES}}
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
