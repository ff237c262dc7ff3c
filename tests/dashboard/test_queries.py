"""Queries: agree with direct SQL, are parameterised, release the file at once, see new runs."""
from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from dashboard import queries
from pipeline.store.db import refresh_explorer
from tests.store_versions import make_version_5, make_version_6, make_version_7

RUN = "20260101-000000-lightcnn-softlabel-aaaa"
FP = "fp-synth-1"


@pytest.fixture(scope="module")
def ref(fake_store):
    return queries.create_store_ref(fake_store)


def _sql(store, sql, params=()):
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("filters,where,params", [
    (queries.ErrorFilters(correct="all"), "TRUE", []),
    (queries.ErrorFilters(), "NOT correct", []),
    (queries.ErrorFilters(correct="correct", true_labels=("Fear", "Anger")), "correct AND true_label IN ('Fear', 'Anger')", []),
    (queries.ErrorFilters(correct="all", conf_min=0.5, conf_max=0.8), "confidence BETWEEN 0.5 AND 0.8", []),
    (queries.ErrorFilters(correct="all", genders=("female",), source="deepface", fingerprint=FP),
     "image_id IN (SELECT image_id FROM demographics WHERE source = 'deepface' AND gender = 'female' "
     "AND dataset_fingerprint = ?)", [FP]),
    (queries.ErrorFilters(tag="background"),
     "NOT correct AND image_id IN (SELECT image_id FROM failure_tags WHERE run_id = ? AND tag = 'background')", [RUN]),
])
def test_counts_and_pages_agree_with_sql(fake_store, ref, filters, where, params):
    expected = _sql(fake_store, f"SELECT image_id FROM predictions WHERE run_id = ? AND split = 'test' AND {where} "
                                "ORDER BY confidence DESC, image_id", [RUN, *params])
    assert queries.count_predictions(ref, RUN, filters) == len(expected)
    page = queries.load_prediction_page(ref, RUN, filters, 10, 5)
    assert page["image_id"].tolist() == [r[0] for r in expected[5:15]]


def test_values_are_parameters_not_sql(ref):
    hostile = queries.ErrorFilters(correct="all", true_labels=("x') OR TRUE --",), tag="'; DROP TABLE runs; --")
    assert queries.count_predictions(ref, RUN, hostile) == 0
    assert len(queries.load_runs(ref)) == 2


def test_reading_does_not_keep_the_file_open(tmp_path, fake_store):
    db = tmp_path / "r.duckdb"
    shutil.copy(fake_store, db)
    r = queries.create_store_ref(db)
    queries.load_runs(r)
    queries.load_prediction_page(r, RUN, queries.ErrorFilters(), 5, 0)
    # A connection left open in this process would make this writable open fail ("different configuration").
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET recipe = 'changed' WHERE run_id = ?", [RUN])
    con.close()
    changed = queries.create_store_ref(db)
    assert queries.load_runs(changed).set_index("run_id").loc[RUN, "recipe"] == "changed"


def test_a_new_run_shows_after_a_refresh(tmp_path, fake_store):
    db = tmp_path / "n.duckdb"
    shutil.copy(fake_store, db)
    before = queries.create_store_ref(db)
    assert len(queries.load_runs(before)) == 2
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET status = 'complete' WHERE status = 'running'")
    con.close()
    after = queries.create_store_ref(db)
    assert after != before
    assert len(queries.load_runs(after)) == 3


def test_busy_store_raises_store_busy(tmp_path, fake_store, monkeypatch):
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "b.duckdb"
    shutil.copy(fake_store, db)
    monkeypatch.setattr(queries, "BUSY_TIMEOUT_S", 0.2)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys
        con = duckdb.connect({str(db)!r})
        print("locked", flush=True)
        sys.stdin.read()""")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(queries.StoreBusyError, match="refresh in a moment"):
            queries.load_runs(queries.create_store_ref(db))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_cams(ref):
    page = queries.load_prediction_page(ref, RUN, queries.ErrorFilters(), 6, 0)
    cams = queries.load_cams(ref, RUN, tuple(page["image_id"]), "gradcam")
    assert set(cams["image_id"]) == set(page["image_id"])
    assert set(cams["target"]) == {"pred", "true"}  # misclassified: both targets


_PRED_MAPS = """FROM heatmaps h JOIN predictions p ON p.run_id = h.run_id AND p.image_id = h.image_id
                WHERE h.run_id = ? AND h.method = ? AND h.target = 'pred'"""


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])  # every image / a quarter of them
def test_mean_cams_are_the_mean_of_every_stored_map(fake_store, ref, method):
    rows = _sql(fake_store, f"SELECT p.true_label, p.correct, h.cam {_PRED_MAPS}", [RUN, method])
    means = queries.load_mean_cams(ref, RUN, method).set_index(["emotion", "correct"])
    groups: dict[tuple, list[bytes]] = {}
    for label, correct, cam in rows:
        groups.setdefault((label, correct), []).append(bytes(cam))
    assert sorted(means.index) == sorted(groups) and means["n"].sum() == len(rows)
    for key, cams in groups.items():
        expected = np.stack([np.frombuffer(c, np.uint8).reshape(32, 32) for c in cams]).mean(axis=0) / 255.0
        assert means.loc[key, "n"] == len(cams)
        assert means.loc[key, "mean_cam"].shape == (32, 32)
        assert np.allclose(means.loc[key, "mean_cam"], expected, atol=1e-6)


def test_region_energy_is_the_mean_of_every_stored_row(fake_store, ref):
    energy = queries.load_region_energy(ref, RUN, "gradcam")
    cols = [c[2:] for c in queries.ENERGY_COLUMNS]
    assert np.allclose(energy[cols].sum(axis=1), 1.0, atol=1e-4)
    assert energy["n"].sum() == 300
    expected = _sql(fake_store, f"""SELECT p.true_label, p.correct, count(*), {', '.join(f'avg(h.{c})' for c in
                                    queries.ENERGY_COLUMNS)} {_PRED_MAPS} GROUP BY ALL ORDER BY 1, 2 DESC""",
                    [RUN, "gradcam"])
    # natural order: correct first, then misclassified, each in class order (not alphabetical)
    from pipeline.constants import EMOTIONS
    rank = {e: i for i, e in enumerate(EMOTIONS)}
    expected = sorted(expected, key=lambda r: (not r[1], rank[r[0]]))
    assert energy[["emotion", "correct", "n"]].values.tolist() == [list(r[:3]) for r in expected]
    assert np.allclose(energy[cols].to_numpy(float), np.array([r[3:] for r in expected], float), atol=1e-6)
    assert queries.load_region_energy(ref, RUN, "gradcam", "val").empty
    assert not queries.load_summary_outdated(ref, RUN, "gradcam")


def test_status_of_bad_stores(tmp_path):
    assert queries.load_store_status(queries.create_store_ref(tmp_path / "none.duckdb")).state == "missing"
    con = duckdb.connect(str(tmp_path / "foreign.duckdb"))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    status = queries.load_store_status(queries.create_store_ref(tmp_path / "foreign.duckdb"))
    assert status.state == "old-schema"


# ---------------------------------------------------------------- keyset paging

PAGED_FILTERS = [
    queries.ErrorFilters(),
    queries.ErrorFilters(correct="all"),
    queries.ErrorFilters(correct="all", order="image"),
    queries.ErrorFilters(correct="all", true_labels=("Happiness", "Fear"), conf_min=0.4, conf_max=0.9),
    queries.ErrorFilters(correct="all", genders=("female",), races=("Asian", "Caucasian"), source="annotations",
                         fingerprint=FP),
    queries.ErrorFilters(tag="background", method="gradcam", source="deepface", fingerprint=FP),
    queries.ErrorFilters(correct="correct", method="gradcam++", source="annotations", fingerprint=FP),
]


def _assert_keyset_pages_match_offset(ref, filters, per_page):
    """Every page read by key equals the OFFSET query's, pages visited out of order (as st.pagination
    jumps), each from a cold cache; together they are every filtered row once, in order."""
    total = queries.count_predictions(ref, RUN, filters)
    n_pages = max(1, -(-total // per_page))
    everything = queries.load_prediction_page_by_offset(ref, RUN, filters, None)
    assert len(everything) == total
    pages = {}
    for page_no in [n_pages, 1, (n_pages + 1) // 2, 2, n_pages - 1, n_pages + 1, 3, *range(1, n_pages + 1)]:
        if page_no < 1:
            continue
        queries.st.cache_data.clear()  # no page start known from an earlier page: a true jump
        offset = (page_no - 1) * per_page
        keyset = queries.load_prediction_page(ref, RUN, filters, per_page, offset)
        by_offset = queries.load_prediction_page_by_offset(ref, RUN, filters, per_page, offset)
        assert keyset.equals(by_offset), (filters, page_no)
        assert list(keyset.columns) == list(everything.columns)
        pages[page_no] = keyset
    assert pages[n_pages + 1].empty  # past the end
    joined = [i for p in range(1, n_pages + 1) for i in pages[p]["image_id"]]
    assert joined == everything["image_id"].tolist()


@pytest.mark.parametrize("filters", PAGED_FILTERS, ids=lambda f: f.describe() + "-" + f.order)
def test_keyset_pages_equal_offset_pages(ref, filters):
    _assert_keyset_pages_match_offset(ref, filters, per_page=12)


def test_keyset_pages_break_confidence_ties_by_image_id(fake_store, tmp_path):
    """Many equal confidences (rounded to one decimal): a page that starts inside a run of ties
    still begins where the OFFSET query's does."""
    store = tmp_path / "ties.duckdb"
    shutil.copy(fake_store, store)
    con = duckdb.connect(str(store))
    con.execute("UPDATE predictions SET confidence = round(confidence, 1)")
    refresh_explorer(con)  # a write past the store's own functions: derive the explorer rows as they would
    con.close()
    tied = queries.create_store_ref(store)
    assert _sql(store, "SELECT count(DISTINCT confidence) FROM predictions WHERE run_id = ?", [RUN])[0][0] <= 11
    for filters in PAGED_FILTERS[:4]:
        _assert_keyset_pages_match_offset(tied, filters, per_page=5)


def test_page_start_is_the_offset_rows_key(ref):
    f = queries.ErrorFilters(correct="all")
    rows = queries.load_prediction_page_by_offset(ref, RUN, f, None)
    for offset in (1, 13, 150, len(rows) - 1):
        row = rows.iloc[offset]
        assert queries.load_page_start(ref, RUN, f, offset) == (float(row["confidence"]), row["image_id"])
    assert queries.load_page_start(ref, RUN, f, len(rows)) is None
    assert queries.load_page_start(ref, RUN, queries.ErrorFilters(correct="all", order="image"), 0) == \
        (min(rows["image_id"]),)


def _make_version_6(path) -> None:
    """Make `path` a store written before explorer rows (schema version 6): no explorer tables."""
    con = duckdb.connect(str(path))
    try:
        make_version_6(con)
    finally:
        con.close()


def _make_version_5(path) -> None:
    """Make `path` a store written before image keys (schema version 5): no image_keys table or columns."""
    con = duckdb.connect(str(path))
    try:
        make_version_5(con)
    finally:
        con.close()


JOINED_FILTERS = [*PAGED_FILTERS[4:],
                  queries.ErrorFilters(correct="all", ages=("20-39", "70+"), genders=("male",), tag="occlusion",
                                       source="annotations", fingerprint=FP)]


@pytest.mark.parametrize("version", [5, 6])
def test_an_older_store_pages_the_same_then_and_after_its_upgrade(fake_store, ref, tmp_path, version):
    """Version 5 (no image keys: the filters join on image_id) and version 6 (no explorer rows: the
    filters are semi-joins on image_key over the predictions) give the rows of the current store;
    a writable open upgrades it (keys, explorer rows), and the pages stay the same."""
    from pipeline.store import db as store

    old = tmp_path / f"v{version}.duckdb"
    shutil.copy(fake_store, old)
    (_make_version_5 if version == 5 else _make_version_6)(old)
    old_ref = queries.create_store_ref(old)
    assert queries.load_store_status(old_ref).state == "ok"
    assert queries.load_join_column(old_ref) == ("image_id" if version == 5 else "image_key")
    assert queries.load_explorer_codes(old_ref, RUN) is None and queries.load_explorer_codes(ref, RUN) is not None

    def pages(r):
        return [(queries.count_predictions(r, RUN, f),
                 *(queries.load_prediction_page(r, RUN, f, 12, offset) for offset in (0, 12, 60)))
                for f in JOINED_FILTERS]

    def same(a, b):
        return all(x[0] == y[0] and all(p.equals(q) for p, q in zip(x[1:], y[1:])) for x, y in zip(a, b))

    keyed = pages(ref)
    assert all(count > 0 for count, *_ in keyed)
    assert same(pages(old_ref), keyed)
    store.connect(old).close()  # a writable open upgrades it in place
    upgraded = queries.create_store_ref(old)
    assert queries.load_join_column(upgraded) == "image_key"
    assert queries.load_explorer_codes(upgraded, RUN) == queries.load_explorer_codes(ref, RUN)
    assert same(pages(upgraded), keyed)
    _assert_keyset_pages_match_offset(upgraded, JOINED_FILTERS[-1], per_page=7)


NO_MATCH_FILTERS = [
    queries.ErrorFilters(correct="all", method="no-such-method"),
    queries.ErrorFilters(correct="all", tag="no-such-tag"),
    queries.ErrorFilters(correct="all", true_labels=("Contempt",)),
    queries.ErrorFilters(correct="all", genders=("female",), source="no-such-source", fingerprint=FP),
    queries.ErrorFilters(correct="all", races=("no-such-race",), source="annotations", fingerprint=FP),
]


@pytest.mark.parametrize("filters", NO_MATCH_FILTERS, ids=lambda f: f.describe())
def test_values_the_run_has_no_code_for_match_nothing(ref, filters):
    assert queries.count_predictions(ref, RUN, filters) == 0
    page = queries.load_prediction_page(ref, RUN, filters, 12, 0)
    assert page.empty and page.equals(queries.load_prediction_page_by_offset(ref, RUN, filters, 12, 0))


def test_a_source_not_stored_without_demographic_filters_selects_every_row(ref):
    """The source only picks which block of explorer rows carries demographics; without a
    demographic filter any source (even one not stored) selects the same predictions."""
    for source in ("annotations", "deepface", "no-such-source", ""):
        f = queries.ErrorFilters(tag="background", source=source, fingerprint=FP)
        _assert_keyset_pages_match_offset(ref, f, per_page=9)
    # the demographics of another dataset than the run's (none for these images here): looked up, not decoded
    _assert_keyset_pages_match_offset(ref, queries.ErrorFilters(tag="background", source="annotations",
                                                                fingerprint="fp-rafdb-1"), per_page=9)


def test_tags_beyond_the_mask_bits_filter_through_failure_tags(fake_store, tmp_path):
    """A run with more tags than explorer_rows' mask has bits: the rarest tags have no bit and are
    filtered by a semi-join on failure_tags, with the same rows as the OFFSET query."""
    from pipeline.store import db as store

    path = tmp_path / "many-tags.duckdb"
    shutil.copy(fake_store, path)
    con = duckdb.connect(str(path))
    con.execute("""INSERT INTO failure_tags
                   SELECT run_id, image_id, 'extra', 'extra-' || lpad(CAST(t AS VARCHAR), 2, '0'), image_key
                   FROM (SELECT run_id, image_id, image_key, row_number() OVER (ORDER BY image_id) AS r
                         FROM predictions WHERE run_id = ?) p, range(70) AS g(t)
                   WHERE p.r % 71 <= 70 - t""", [RUN])  # tag t on fewer images the larger t
    refresh_explorer(con)
    con.close()
    many = queries.create_store_ref(path)
    codes = queries.load_explorer_codes(many, RUN)["tag"]
    assert len(codes) > store.EXPLORER_MASK_BITS
    rare = [t for t, c in codes.items() if c >= store.EXPLORER_MASK_BITS]
    common = [t for t, c in codes.items() if c < store.EXPLORER_MASK_BITS and t.startswith("extra-")]
    counts = dict(queries.load_failure_tag_counts(many, RUN)[["tag", "n"]].itertuples(index=False))
    assert counts == dict(_sql(path, "SELECT tag, count(*) FROM failure_tags WHERE run_id = ? GROUP BY tag", [RUN]))
    for tag in (rare[0], rare[-1], common[-1], "background"):
        f = queries.ErrorFilters(correct="all", tag=tag, source="annotations", fingerprint=FP)
        expected = _sql(path, "SELECT count(DISTINCT image_id) FROM failure_tags WHERE run_id = ? AND tag = ?",
                        [RUN, tag])[0][0]
        assert queries.count_predictions(many, RUN, f) == expected > 0
        _assert_keyset_pages_match_offset(many, f, per_page=25)


@pytest.mark.parametrize("version", [8, 7])
def test_demographic_sources_and_heatmap_layers_equal_their_definition(fake_store, tmp_path, version):
    """The shell's sources and the Explanations page's layers: read from the store's derived tables
    (version 8) or, on a version-7 store read as it is, grouped from the demographics and heatmaps."""
    path = tmp_path / f"v{version}.duckdb"
    shutil.copy(fake_store, path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE heatmaps SET target_layer = 'features.2' WHERE run_id = ? AND method = 'gradcam' "
                "AND image_id IN (SELECT image_id FROM heatmaps WHERE run_id = ? LIMIT 3)", [RUN, RUN])
    refresh_explorer(con)  # a write past the store's own functions: derive as they would
    if version == 7:
        make_version_7(con)
    con.close()
    ref = queries.create_store_ref(path)
    assert ("heatmap_layers" in queries.load_missing_tables(ref)) == (version == 7)
    sources = queries.load_demographic_sources(ref, FP)
    expected = _sql(path, """SELECT source, bool_or(inferred), count(*) FROM demographics
                             WHERE dataset_fingerprint = ? GROUP BY source ORDER BY bool_or(inferred), source""", [FP])
    assert list(sources.itertuples(index=False, name=None)) == expected and len(expected) >= 2
    assert queries.load_demographic_sources(ref, "no-such-fingerprint").empty
    layers = _sql(path, "SELECT method, min(target_layer) FROM heatmaps WHERE run_id = ? GROUP BY method "
                        "ORDER BY method", [RUN])
    assert queries.load_heatmap_layers(ref, RUN) == dict(layers) and len(layers) >= 2
    assert dict(layers)["gradcam"] == "features.2"
    assert queries.load_heatmap_layers(ref, "no-such-run") == {}
