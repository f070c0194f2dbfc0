"""atheris harness: stird.adapters.agi_protocol: parse_reply, parse_env, AgiRequest reading
a session (PEER_ERRORS).

Run one:
    .venv/bin/python fuzz/fuzz_agi.py -runs=100000 CORPUS_DIR fuzz/work/seeds/agi
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("agi")
