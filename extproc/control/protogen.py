"""Generate the Python code of proto/tokengate/control/v1/control.proto (`make proto`).

Deterministic, so a test can regenerate into a temporary directory and fail when the
committed code is stale. The gRPC plugin writes a top-level `import control_pb2`; it is
rewritten to import from this package.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "tokengate" / "control" / "v1"
OUT_DIR = Path(__file__).resolve().parent
FILES = ("control_pb2.py", "control_pb2.pyi", "control_pb2_grpc.py")


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(PROTO_DIR / "control.proto")]  # fmt: skip
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on control.proto")
    grpc_file = out_dir / "control_pb2_grpc.py"
    flat = "import control_pb2 as control__pb2"
    text = grpc_file.read_text().replace(flat, f"from extproc.control {flat}")
    grpc_file.write_text(text)
    return [out_dir / name for name in FILES]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        sys.stdout.write(f"wrote {path}\n")
