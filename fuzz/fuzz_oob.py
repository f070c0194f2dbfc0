"""atheris harness: stird.core.oob: decode_entry, entry_from_bytes, open_entry, key_from_jwk
(StirError).

Run one:
    .venv/bin/python fuzz/fuzz_oob.py -runs=100000 CORPUS_DIR fuzz/work/seeds/oob
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("oob")
