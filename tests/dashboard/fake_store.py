"""A realistic fake results store, written straight from SQL with pipeline/store/schema.sql.

Used by the dashboard tests (a few hundred predictions, real JPEGs on disk for
most of them) and by bench/bench_dashboard.py (a million predictions with their
heatmaps and demographics). Everything is generated inside DuckDB so that the
million-row store takes seconds, not minutes; derived tables (confusion,
class_metrics, audit cells and gaps, proxy agreement) are computed from the
generated predictions, and heatmap_summary from the generated heatmaps, so that
they agree with them. Predictions are written in the store's storage order
(pipeline.store.db.STORAGE_ORDER), every row's image_key set (store.fill_image_keys),
every run's explorer rows built (store.refresh_explorer) and schema.sql's indexes built
after the rows, as the pipeline's writer leaves a store of this schema version.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np

from pipeline.constants import EMOTIONS, FACE_REGIONS

SCHEMA_SQL = Path(__file__).resolve().parents[2] / "pipeline" / "store" / "schema.sql"
METHODS = ("gradcam", "gradcam++")
CAM_SIZE = 32
N_CAM_PATTERNS = 64


def _schema_version() -> str:
    try:
        from pipeline.store.db import SCHEMA_VERSION  # the real value once the store module exists
        return str(SCHEMA_VERSION)
    except ImportError:
        return "1"


def _schema_and_indexes() -> tuple[str, tuple[str, ...]]:
    """schema.sql without its CREATE INDEX statements, and those statements (pipeline.store.db.INDEX_STATEMENTS)."""
    text = SCHEMA_SQL.read_text()
    try:
        from pipeline.store.db import INDEX_STATEMENTS
    except ImportError:
        return text, ()
    for statement in INDEX_STATEMENTS:
        text = text.replace(statement, "")
    return text, INDEX_STATEMENTS


def _fill_derived(con) -> None:
    """Every row's image_key and every run's explorer rows, as the pipeline's writer sets them
    (rows are written with NULL keys here, and straight from SQL)."""
    from pipeline.store.db import fill_image_keys, refresh_explorer

    fill_image_keys(con)
    refresh_explorer(con)


def _cam_patterns(rng: np.random.Generator) -> list[bytes]:
    """Gaussian blobs around facial-feature positions, as uint8 32x32 blobs."""
    yy, xx = np.mgrid[0:CAM_SIZE, 0:CAM_SIZE] / (CAM_SIZE - 1)
    centres = [(0.38, 0.35), (0.38, 0.65), (0.55, 0.5), (0.75, 0.5), (0.1, 0.1), (0.5, 0.5)]
    out = []
    for i in range(N_CAM_PATTERNS):
        cy, cx = centres[i % len(centres)]
        cy += rng.normal(0, 0.05)
        cx += rng.normal(0, 0.05)
        s = 0.08 + 0.1 * rng.random()
        cam = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        cam = cam / cam.max()
        out.append((cam * 255).astype(np.uint8).tobytes())
    return out


def _write_face_jpeg(path: Path, label_idx: int, tone: int) -> None:
    from PIL import Image, ImageDraw

    skin = [(236, 200, 170), (150, 105, 75), (205, 165, 120)][tone % 3]
    img = Image.new("RGB", (100, 100), (90 + 20 * (label_idx % 3), 110, 140))
    d = ImageDraw.Draw(img)
    d.ellipse((18, 10, 82, 92), fill=skin)
    d.ellipse((32, 36, 44, 44), fill=(30, 30, 30))
    d.ellipse((56, 36, 68, 44), fill=(30, 30, 30))
    mouth_h = 4 + 3 * (label_idx % 4)
    d.ellipse((38, 66, 62, 66 + mouth_h), fill=(120, 30, 40))
    img.save(path, quality=90)


def create_fake_store(
    db_path: str | Path,
    *,
    n_predictions: int = 300,
    image_dir: str | Path | None = None,
    missing_images: int = 5,
    seed: int = 0,
    extra_runs: bool = True,
    second_run_predictions: int | None = None,
) -> Path:
    """Write a fake store at `db_path` (overwritten) and return its path.

    n_predictions: test-split predictions of the main run (the second run
    gets `second_run_predictions`, by default a third as many). image_dir: when given, a small JPEG is written for
    every predicted image of the main run except the last `missing_images`
    (whose paths then point at files that do not exist); when None, paths
    point into a directory that does not exist.
    """
    db_path = Path(db_path)
    for p in (db_path, Path(str(db_path) + ".wal")):
        if p.exists():
            p.unlink()
    rng = np.random.default_rng(seed)
    con = duckdb.connect(str(db_path))
    try:
        schema, indexes = _schema_and_indexes()
        con.execute(schema)  # the tables; their indexes are built after the rows (faster than row by row)
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [_schema_version()])
        con.execute("SELECT setseed(?)", [(seed % 1000) / 1000.0])
        con.execute("CREATE TEMP TABLE cam_pool (k INTEGER, cam BLOB)")
        con.executemany("INSERT INTO cam_pool VALUES (?, ?)", list(enumerate(_cam_patterns(rng))))

        img_root = Path(image_dir) if image_dir is not None else db_path.parent / "no-such-images"
        runs = [
            dict(run_id="20260101-000000-lightcnn-softlabel-aaaa", kind="train", parent=None, status="complete",
                 dataset="synthetic", fp="fp-synth-1", synthetic=True, recipe="lightcnn-softlabel",
                 model="lightcnn", classes=list(EMOTIONS[:6]), n=n_predictions, acc=0.78),
            dict(run_id="20260102-000000-resnet50-transfer-bbbb", kind="train", parent=None, status="complete",
                 dataset="rafdb", fp="fp-rafdb-1", synthetic=False, recipe="resnet50-transfer",
                 model="resnet50", classes=list(EMOTIONS),
                 n=second_run_predictions if second_run_predictions is not None else max(n_predictions // 3, 30),
                 acc=0.85),
        ]
        if extra_runs:
            runs.append(dict(run_id="20260103-000000-resnet50-transfer-cccc", kind="train", parent=None,
                             status="running", dataset="rafdb", fp="fp-rafdb-1", synthetic=False,
                             recipe="resnet50-transfer", model="resnet50", classes=list(EMOTIONS),
                             n=0, acc=None))
        for i, r in enumerate(runs):
            _insert_run(con, r, i, img_root)
        if image_dir is not None:
            (img_root / runs[0]["run_id"]).mkdir(parents=True, exist_ok=True)
            rows = con.execute(
                "SELECT i.path, i.true_label FROM images i WHERE run_id = ? ORDER BY image_id",
                [runs[0]["run_id"]]).fetchall()
            keep = rows[: max(len(rows) - missing_images, 0)]
            for j, (path, label) in enumerate(keep):
                _write_face_jpeg(Path(path), EMOTIONS.index(label), j)
        _fill_derived(con)
        for statement in indexes:
            con.execute(statement)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return db_path


def _insert_run(con: duckdb.DuckDBPyConnection, r: dict, i: int, img_root: Path) -> None:
    run_id, classes, n = r["run_id"], r["classes"], r["n"]
    k = len(classes)
    config = {"recipe": r["recipe"], "epochs": 3, "batch_size": 64, "fake": True}
    con.execute(
        """INSERT INTO runs (run_id, kind, parent_run_id, status, dataset, dataset_root, dataset_fingerprint,
               is_synthetic, recipe, model, classes, config, code_version, seed, device, started_at,
               finished_at, train_seconds, eval_seconds, checkpoint_path, test_accuracy, test_macro_f1, n_test)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
           TIMESTAMP '2026-01-01 10:00:00' + to_days(?), NULL, 12.5, 3.25, NULL, NULL, NULL, ?)""",
        [run_id, r["kind"], r["parent"], r["status"], r["dataset"], f"/data/{r['dataset']}", r["fp"],
         r["synthetic"], r["recipe"], r["model"], classes, json.dumps(config), "0.1.0+fake", 7, "cpu", i, n],
    )
    for e in range(1, 6):
        con.execute("INSERT INTO epochs (run_id, epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, e, 1.8 / e, 0.4 + 0.08 * e, 1.9 / e + 0.1, 0.35 + 0.08 * e, 1e-3 / e, 40.0])
    if n == 0:
        return
    acc = r["acc"]
    # Predictions: test split; true label skewed a little so the classes differ in support.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE gen AS
        SELECT format('test_{{:07d}}', g) AS image_id,
               CAST(floor(pow(random(), 1.3) * {k}) AS INTEGER) AS t,
               random() < {acc} AS ok,
               CAST(floor(random() * {k - 1}) AS INTEGER) AS off,
               random() AS u, random() AS u2, random() AS u3, random() AS u4, random() AS u5,
               CAST(floor(random() * {N_CAM_PATTERNS}) AS INTEGER) AS cam_k
        FROM range(1, {n + 1}) r(g)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE gen2 AS
        SELECT *, CASE WHEN ok THEN t ELSE (t + 1 + off) % {k} END AS p,
               CASE WHEN ok THEN 0.45 + 0.55 * u ELSE 0.25 + 0.6 * u END AS conf
        FROM gen
        """
    )
    cls = "[" + ", ".join(f"'{c}'" for c in classes) + "]"
    con.execute(
        f"""INSERT INTO images
            SELECT ?, image_id, 'test', ? || '/' || image_id || '.jpg', {cls}[t + 1], NULL FROM gen2""",
        [run_id, str(img_root / run_id)],
    )
    con.execute(
        f"""INSERT INTO predictions
            SELECT ?, image_id, 'test', {cls}[t + 1], {cls}[p + 1], CAST(conf AS FLOAT), p = t,
                   CAST(list_transform(range({k}), lambda x: CASE WHEN x = p THEN conf ELSE (1 - conf) / {k - 1} END)
                        AS FLOAT[]), NULL
            FROM gen2
            ORDER BY CAST(conf AS FLOAT) DESC, image_id""",  # store.STORAGE_ORDER, as insert_frame writes them
        [run_id],
    )
    con.execute(
        """INSERT INTO confusion SELECT run_id, split, true_label, pred_label, count(*)
           FROM predictions WHERE run_id = ? GROUP BY ALL""", [run_id])
    _insert_class_metrics(con, run_id, classes)
    acc_row = con.execute("SELECT avg(correct::INT), count(*) FROM predictions WHERE run_id = ?", [run_id]).fetchone()
    f1 = con.execute("SELECT f1 FROM class_metrics WHERE run_id = ? AND label = 'macro avg'", [run_id]).fetchone()[0]
    con.execute("UPDATE runs SET test_accuracy = ?, test_macro_f1 = ?, n_test = ?, finished_at = started_at + INTERVAL 1 HOUR WHERE run_id = ?",
                [acc_row[0], f1, acc_row[1], run_id])
    # Heatmaps: one method for every image and target; a second method for a slice.
    energy_cols = ", ".join(f"e_{reg}" for reg in FACE_REGIONS)
    for method, frac in ((METHODS[0], 1.0), (METHODS[1], 0.25)):
        for target in ("pred", "true"):
            label_idx = "p" if target == "pred" else "t"
            where = "" if target == "pred" else "WHERE NOT ok"  # 'true' CAMs where they differ from 'pred'
            if frac < 1.0:
                where = ("WHERE " if not where else where + " AND ") + f"u2 < {frac}"
            con.execute(
                f"""INSERT INTO heatmaps (run_id, image_id, method, target, target_label, target_layer, cam_size, cam,
                                          {energy_cols}, peak_region, gt_energy, gt_hit)
                    SELECT ?, image_id, ?, ?, {cls}[{label_idx} + 1], 'layer4', {CAM_SIZE}, cam_pool.cam,
                           0.12 * u3, 0.25 * u4, 0.1, 0.2 * u5, 0.1, 0.1, 0.0, 
                           ['eyes', 'mouth', 'brows', 'background'][1 + cam_k % 4],
                           {'0.35 * u3' if r['synthetic'] else 'NULL'}, {'u3 > 0.3' if r['synthetic'] else 'NULL'}
                    FROM gen2 JOIN cam_pool ON cam_pool.k = gen2.cam_k {where}""",
                [run_id, method, target],
            )
        # normalise energies so they sum to 1 (background takes the rest)
    con.execute(
        """UPDATE heatmaps SET e_background = greatest(0, 1 - (e_brows + e_eyes + e_nose + e_mouth + e_cheeks + e_face_rest))
           WHERE run_id = ?""", [run_id])
    _insert_heatmap_summary(con, run_id)
    con.execute(
        """INSERT INTO failure_tags
           SELECT ?, image_id, 'gradcam', CASE WHEN cam_k % 3 = 0 THEN 'background' WHEN cam_k % 3 = 1 THEN 'occlusion'
                                               ELSE 'low-confidence' END, NULL FROM gen2 WHERE NOT ok""", [run_id])
    con.execute(
        f"""INSERT INTO failure_tags
            SELECT ?, image_id, '', 'confusion:' || {cls}[t + 1] || '->' || {cls}[p + 1], NULL FROM gen2 WHERE NOT ok""",
        [run_id])
    _insert_demographics(con, r["fp"], run_id)
    _insert_audit(con, run_id, r["fp"])
    _insert_explanation_metrics(con, run_id, classes)


def _insert_heatmap_summary(con, run_id: str) -> None:
    """heatmap_summary computed from the heatmaps just written, as `explain` stores it with its maps.

    The mean map sums each distinct stored blob times its count (the maps come
    from a small pool, so this reads the million-row table once, grouped).
    """
    energy_cols = [f"e_{reg}" for reg in FACE_REGIONS]
    keys = "h.method, p.split, p.true_label, p.correct, h.cam_size"
    join = """FROM heatmaps h JOIN predictions p ON p.run_id = h.run_id AND p.image_id = h.image_id
              WHERE h.run_id = ? AND h.target = 'pred'"""
    groups = con.execute(f"SELECT {keys}, count(*), {', '.join(f'avg(h.{c})' for c in energy_cols)} {join} "
                         "GROUP BY ALL", [run_id]).fetchall()
    sums: dict[tuple, np.ndarray] = {}
    for *key, blob, count in con.execute(f"SELECT {keys}, h.cam, count(*) {join} GROUP BY ALL", [run_id]).fetchall():
        maps = np.frombuffer(bytes(blob), dtype=np.uint8).astype(np.float64) * count
        sums[tuple(key)] = sums.get(tuple(key), 0.0) + maps
    rows = []
    for method, split, emotion, correct, size, n, *energies in groups:
        mean_cam = (sums[(method, split, emotion, correct, size)] / (255.0 * n)).astype("<f4")
        rows.append([run_id, method, split, emotion, correct, n, *energies, size, mean_cam.tobytes()])
    if not rows:
        return
    con.executemany(f"INSERT INTO heatmap_summary (run_id, method, split, emotion, correct, n, "
                    f"{', '.join(energy_cols)}, cam_size, mean_cam) VALUES ({', '.join('?' for _ in rows[0])})", rows)


def _insert_class_metrics(con, run_id: str, classes: list[str]) -> None:
    con.execute(
        """
        INSERT INTO class_metrics
        WITH c AS (SELECT * FROM confusion WHERE run_id = ?),
        lbl AS (SELECT unnest(?::VARCHAR[]) AS label),
        s AS (
          SELECT lbl.label,
                 coalesce((SELECT sum(n) FROM c WHERE c.true_label = lbl.label AND c.pred_label = lbl.label), 0) AS tp,
                 coalesce((SELECT sum(n) FROM c WHERE c.pred_label = lbl.label), 0) AS pp,
                 coalesce((SELECT sum(n) FROM c WHERE c.true_label = lbl.label), 0) AS sup
          FROM lbl),
        m AS (SELECT label, CASE WHEN pp > 0 THEN tp / pp ELSE 0 END AS precision,
                     CASE WHEN sup > 0 THEN tp / sup ELSE 0 END AS recall, sup, tp FROM s)
        SELECT ?, 'test', label, precision, recall,
               CASE WHEN precision + recall > 0 THEN 2 * precision * recall / (precision + recall) ELSE 0 END, sup
        FROM m
        """,
        [run_id, classes, run_id],
    )
    con.execute(
        """INSERT INTO class_metrics
           SELECT run_id, split, 'macro avg', avg(precision), avg(recall), avg(f1), sum(support)
           FROM class_metrics WHERE run_id = ? GROUP BY run_id, split
           UNION ALL
           SELECT run_id, split, 'weighted avg', sum(precision * support) / sum(support),
                  sum(recall * support) / sum(support), sum(f1 * support) / sum(support), sum(support)
           FROM class_metrics WHERE run_id = ? AND label NOT IN ('macro avg') GROUP BY run_id, split""",
        [run_id, run_id],
    )
    acc, n = con.execute("SELECT avg(correct::INT), count(*) FROM predictions WHERE run_id = ?", [run_id]).fetchone()
    con.execute("INSERT INTO class_metrics (run_id, split, label, f1, support) VALUES (?, 'test', 'accuracy', ?, ?)", [run_id, acc, n])


def _insert_demographics(con, fp: str, run_id: str) -> None:
    exists = con.execute("SELECT count(*) FROM demographics WHERE dataset_fingerprint = ?", [fp]).fetchone()[0]
    if exists:
        return
    con.execute(
        """INSERT INTO demographics
           SELECT ?, image_id, 'annotations', false,
                  ['male', 'female', 'unsure'][1 + CAST(u2 * 100 AS INT) % 3 // (CASE WHEN u3 < 0.95 THEN 2 ELSE 1 END) % 3],
                  ['Caucasian', 'African-American', 'Asian'][1 + CAST(u3 * 1000 AS INT) % 3],
                  ['0-3', '4-19', '20-39', '40-69', '70+'][1 + CAST(u4 * 100 AS INT) % 5],
                  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
           FROM gen2""", [fp])
    con.execute(
        """INSERT INTO demographics
           SELECT d.dataset_fingerprint, d.image_id, 'deepface', true,
                  CASE WHEN g.u5 < 0.85 THEN d.gender ELSE 'male' END,
                  CASE WHEN g.u5 < 0.7 THEN d.race ELSE 'Asian' END,
                  CASE WHEN g.u < 0.6 THEN d.age_group ELSE '20-39' END,
                  'Woman', 'asian', '31', CAST(0.5 + 0.5 * g.u5 AS FLOAT), CAST(0.4 + 0.6 * g.u AS FLOAT),
                  CAST(0.3 + 0.5 * g.u3 AS FLOAT), '{"gender": {"Woman": 0.7, "Man": 0.3}}', NULL
           FROM demographics d JOIN gen2 g USING (image_id)
           WHERE d.dataset_fingerprint = ? AND d.source = 'annotations'""", [fp])
    con.execute(
        """INSERT INTO proxy_agreement
           SELECT a.dataset_fingerprint, 'deepface', 'annotations', attr, av, iv, count(*) FROM (
             SELECT a.dataset_fingerprint, 'gender' AS attr, a.gender AS av, b.gender AS iv
               FROM demographics a JOIN demographics b USING (dataset_fingerprint, image_id)
               WHERE a.source = 'annotations' AND b.source = 'deepface' AND a.dataset_fingerprint = ?
             UNION ALL
             SELECT a.dataset_fingerprint, 'race', a.race, b.race
               FROM demographics a JOIN demographics b USING (dataset_fingerprint, image_id)
               WHERE a.source = 'annotations' AND b.source = 'deepface' AND a.dataset_fingerprint = ?
             UNION ALL
             SELECT a.dataset_fingerprint, 'age', a.age_group, b.age_group
               FROM demographics a JOIN demographics b USING (dataset_fingerprint, image_id)
               WHERE a.source = 'annotations' AND b.source = 'deepface' AND a.dataset_fingerprint = ?
           ) a GROUP BY ALL""", [fp, fp, fp])


_GROUP_EXPRS = {
    "gender": "d.gender",
    "race": "d.race",
    "age": "d.age_group",
    "gender×emotion": "d.gender || ' | ' || p.true_label",
    "race×emotion": "d.race || ' | ' || p.true_label",
    "age×emotion": "d.age_group || ' | ' || p.true_label",
    "gender×race": "d.gender || ' | ' || d.race",
    "gender×race×emotion": "d.gender || ' | ' || d.race || ' | ' || p.true_label",
}


def _insert_audit(con, run_id: str, fp: str) -> None:
    z = 1.959964
    for source in ("annotations", "deepface"):
        for attribute, expr in _GROUP_EXPRS.items():
            # Wilson interval for accuracy
            con.execute(
                f"""INSERT INTO audit_cells
                    SELECT ?, ?, 'test', ?, grp, 'accuracy', n, acc,
                           (acc + {z}^2 / (2 * n) - {z} * sqrt(acc * (1 - acc) / n + {z}^2 / (4 * n * n))) / (1 + {z}^2 / n),
                           (acc + {z}^2 / (2 * n) + {z} * sqrt(acc * (1 - acc) / n + {z}^2 / (4 * n * n))) / (1 + {z}^2 / n),
                           n < 30
                    FROM (SELECT {expr} AS grp, count(*) AS n, avg(p.correct::INT) AS acc
                          FROM predictions p JOIN demographics d
                            ON d.image_id = p.image_id AND d.dataset_fingerprint = ? AND d.source = ?
                          WHERE p.run_id = ? AND {expr} IS NOT NULL GROUP BY 1)""",
                [run_id, source, attribute, fp, source, run_id],
            )
            if "×" not in attribute:
                con.execute(
                    """INSERT INTO audit_cells
                       SELECT run_id, source, split, attribute, grp, 'macro_f1', n, value * 0.97,
                              ci_low * 0.95, least(1, ci_high * 0.99), low_support
                       FROM audit_cells WHERE run_id = ? AND source = ? AND attribute = ? AND metric = 'accuracy'""",
                    [run_id, source, attribute])
        rows = con.execute(
            """SELECT attribute, metric, arg_min(grp, value), min(value), max(value), sum(n)
               FROM audit_cells WHERE run_id = ? AND source = ? GROUP BY attribute, metric""",
            [run_id, source]).fetchall()
        pvals = []
        for attribute, metric, worst, lo, hi, n in rows:
            gap = hi - lo
            se = math.sqrt(max(hi * (1 - hi), 0.01) / max(n / 4, 1) * 2)
            p = math.erfc(gap / se / math.sqrt(2))
            pvals.append((attribute, metric, worst, gap, se, p))
        m = len(pvals)
        order = sorted(range(m), key=lambda j: pvals[j][5])
        adjusted = [0.0] * m
        running = 0.0
        for rank, j in enumerate(order):  # Holm step-down
            running = max(running, min(1.0, (m - rank) * pvals[j][5]))
            adjusted[j] = running
        for (attribute, metric, worst, gap, se, p), padj in zip(pvals, adjusted):
            con.execute(
                "INSERT INTO audit_gaps (run_id, source, split, attribute, metric, comparison, grp, gap, ci_low, ci_high, "
                "p_value, p_adjusted, correction, significant) "
                "VALUES (?, ?, 'test', ?, ?, 'best-worst', ?, ?, ?, ?, ?, ?, 'holm', ?)",
                [run_id, source, attribute, metric, worst, gap, gap - 1.96 * se, gap + 1.96 * se, p, padj,
                 padj < 0.05])


def _insert_explanation_metrics(con, run_id: str, classes: list[str]) -> None:
    """The metrics `explain` stores, with its pass flags on gt_energy, pointing and sanity_spearman
    (rules as pipeline/explain/faithfulness.py applies them); n below 30 for some emotions."""
    rows = []
    for mi, method in enumerate(METHODS):
        for ei, emotion in enumerate(["all", *classes]):
            n = 240 if emotion == "all" else 12 + 9 * ei
            values = {metric: base + 0.02 * mi + 0.01 * (len(emotion) % 5) for metric, base in (
                ("road_morf", 0.42), ("road_lerf", 0.18), ("gt_energy", 0.22 + 0.02 * ei),
                ("gt_energy_uniform", 0.12), ("pointing", 0.66 - 0.05 * ei), ("pointing_shuffled", 0.59),
                ("sanity_spearman", 0.21 + 0.3 * mi))}
            passed = {"gt_energy": values["gt_energy"] >= 2.0 * values["gt_energy_uniform"],
                      "pointing": values["pointing"] >= values["pointing_shuffled"] + 0.10,
                      "sanity_spearman": values["sanity_spearman"] < 0.5}
            for metric, v in values.items():
                rows.append([run_id, method, metric, emotion, v, v - 0.03, v + 0.03, n, passed.get(metric)])
    con.executemany("INSERT INTO explanation_metrics (run_id, method, metric, emotion, value, ci_low, ci_high, n, "
                    "passed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
