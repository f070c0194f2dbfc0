"""atheris harness: stird.core.cps: parse_store_body, parse_list_document, parse_tn,
parse_entry_id (StirError).

Run one:
    .venv/bin/python fuzz/fuzz_cps.py -runs=100000 CORPUS_DIR fuzz/work/seeds/cps
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("cps")
