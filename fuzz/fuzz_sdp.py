"""atheris harness: stird.core.sdp.parse_sdp_keys / parse_mky (StirError).

Run one:
    .venv/bin/python fuzz/fuzz_sdp.py -runs=100000 CORPUS_DIR fuzz/work/seeds/sdp
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("sdp")
