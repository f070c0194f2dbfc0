"""atheris harness: stird.core.tn: party_from_header, normalize_uri, addr_specs,
parse_cli_id, party_from_pai, party_from_uri, canonicalize_tn (StirError).

Run one:
    .venv/bin/python fuzz/fuzz_tn.py -runs=100000 CORPUS_DIR fuzz/work/seeds/tn
All of them, with counts: .venv/bin/python fuzz/run.py (see fuzz/README.md)
"""

import atheris

with atheris.instrument_imports(include=["stird", "panoramisk", "pyasn1", "targets"]):
    import targets

    targets.preload()

if __name__ == "__main__":
    targets.main("tn")
