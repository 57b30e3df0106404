"""Write the wire JSON schemas to a directory: ``python -m imgline.schemas.export schemas/json``.

Non-Python consumers read these files; a test fails when they lag behind the models.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgline.schemas.messages import exported_schemas


def write(directory: Path) -> list[Path]:
    """Rewrite every schema file in ``directory`` and remove ones no message owns any more."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = exported_schemas()
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    written = []
    for name, text in wanted.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path("schemas/json")
    for path in write(target):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
