"""atheris harness: stird.adapters.ami._Protocol.data_received -> panoramisk Message ->
ami_calls.CallTable (nothing may escape).

Run one:
    .venv/bin/python fuzz/fuzz_ami.py -runs=100000 CORPUS_DIR fuzz/work/seeds/ami
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("ami")
