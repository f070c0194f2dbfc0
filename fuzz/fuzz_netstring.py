"""atheris harness: stird.adapters.netstring.NetstringDecoder.feed (FramingError;
chunking-invariant).

Run one:
    .venv/bin/python fuzz/fuzz_netstring.py -runs=100000 CORPUS_DIR fuzz/work/seeds/netstring
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("netstring")
