"""atheris harness: stird.adapters.jsonrpc.Dispatcher.handle (nothing may escape; answers
are JSON-RPC).

Run one:
    .venv/bin/python fuzz/fuzz_jsonrpc.py -runs=100000 CORPUS_DIR fuzz/work/seeds/jsonrpc
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("jsonrpc")
