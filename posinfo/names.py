"""posinfo's vocabulary, declared once: option names, file names, run-control keys.

Torch-free and Hydra-free, so every room (the job, the sweep machinery, the analysis,
the config schema, the tests) imports it without cost. Anything that must agree
between two modules lives here, never in both.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

# ----------------------------------------------------------------------------- config options

MAP_TARGETS = ("hor", "ver", "gau", "horstp", "verstp")  # position maps (posinfo.targets); their kind: posinfo.kinds
# grid: the location target (posinfo.location); rowcol, xy: the per-position probes (posinfo.kinds)
TARGETS = (*MAP_TARGETS, "grid", "rowcol", "xy", "placement")  # placement: which cell of a canvas (posinfo.placement)
STRIPES = ("horstp", "verstp")
TARGET_RANGES = ("unit", "signed")

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BAGNETS = ("bagnet9", "bagnet17", "bagnet33")  # receptive fields of 9, 17, 33 px (posinfo.encoders.bagnet)
MODEL_ZOOS = ("timm", "torchvision")  # backbone=timm|torchvision: any model of either library (posinfo.encoders.zoo)
BACKBONES = ("posenet", "vgg16", *RESNETS, *BAGNETS, *MODEL_ZOOS)  # each name's adapter: posinfo.encoders.REGISTRY
INITS = ("torchvision", "pytorch")  # backbone.init: random weights drawn by torchvision's rules or PyTorch's defaults
# backbone.pos_embed: controls on a token model's learned position embedding (posinfo.encoders.posembed);
# the first three take an embedding of any layout, the others one of a vector per token.
POS_EMBED_ANY_LAYOUT = ("keep", "zero", "shuffle")
POS_EMBED = (*POS_EMBED_ANY_LAYOUT, "mean", "noise", "roll")
PRECISIONS = ("float32", "bfloat16", "float16")  # backbone.precision: the encoder's autocast (float32: none)
PADDINGS = ("zeros", "none", "reflect", "replicate", "circular", "partial")
CANVAS_COLORS = ("black", "white", "mean", "noise")  # data.canvas.color
# data.placement.layout (posinfo.placement): grid, the image in one of k×k cells (GAPNet);
# diagonal, top-left or bottom-right of a 2×2 grid (the quadrant task, 4QI).
PLACEMENT_LAYOUTS = ("grid", "diagonal")
IDENTITY_MODES = ("content", "stat")  # data.identity: a folder's images keyed by their bytes, or by size and mtime

INPUT_KINDS = ("natural", "black", "white", "noise", "shuffled", "rotated")
SYNTHETIC_KINDS = ("black", "white", "noise")
# Controls: the test images rearranged, so position carried by the image layout (content)
# is told apart from position carried by the network (padding).
CONTROL_KINDS = ("shuffled", "rotated")
DEFAULT_TILES = 4  # shuffled: each test image cut into DEFAULT_TILES × DEFAULT_TILES tiles

DATA_SOURCES = ("embedded", "folder", "photos")
SELF_CONTAINED_DATA = ("embedded", "photos")  # their images are their own: data.train_dir/test_dir mean nothing there
# Set only by posinfo.probe, never typed on a command line (no YAML option: sweep.py refuses them): a
# user's nn.Module or feature maps (backbone.model names it in posinfo.usermodels' registry) and
# images held by the calling process (data.train_dir/test_dir name them in posinfo.userdata's).
MODULE_BACKBONE = "module"
PYTHON_DATA = "python"
# The paper's datasets that `python -m posinfo.datasets fetch` downloads (posinfo.datasets).
FETCHABLE_DATASETS = ("duts", "pascal-s")

# Training budgets and the convergence rule (posinfo.train; docs/method.md, "Training outcome").
PAPER_STEPS = 4950  # the paper's protocol: ceil(10,553 / 32) = 330 batches × 15 epochs
CONVERGED_REL_CHANGE = 0.02  # converged: the loss fell by at most this over the last tenth of the steps
NORMALIZATIONS = ("none", "imagenet", "model")  # model: the pretrained weights' own mean/std
CACHE_DTYPES = ("float16", "float32")
STANDARDIZE = ("none", "channel")  # readout.standardize: channel, each channel by its training-set mean and std
# readout.solver: how the readout's weights are found (docs/method.md, "The closed-form readout").
# sgd: the paper's recipe; ridge: the optimum of the same objective, linear output, CV penalty.
SOLVERS = ("sgd", "ridge")
# train.loss_at: where the MSE is taken (posinfo.upsampling): image, after upsampling to the
# target's size (the paper's arithmetic); feature, through the upsampling's Gram at the readout's size.
LOSS_AT = ("image", "feature")

# ----------------------------------------------------------------------------- files of a job folder

RESULT_FILE = "result.json"
JOB_LOG = "job.log"  # Hydra's job log: hydra.job.name is "job" (conf/hydra/default.yaml)
STATUS_FILE = ".posinfo_status.json"
TRAIN_LOG = "train_log.jsonl"
PER_IMAGE_FILE = "per_image.csv"
CHANNELS_CSV = "channels.csv"  # analysis.channels=true: each channel's score (posinfo.channels)
CHANNELS_PNG = "channels.png"
PROBEFREE_NPZ = "probefree.npz"  # analysis.probefree=true: per-tap bias maps, similarity curves (posinfo.probefree)
PROBEFREE_PNG = "probefree.png"
READOUT_FILE = "readout.pt"
PREDICTIONS_PNG = "predictions.png"
PREDICTIONS_NPZ = "predictions.npz"
# A finished job's readout applied to new images (python -m posinfo.predict / posinfo.evaluate).
PREDICT_DIR = "predict"
EVALUATIONS_DIR = "evaluations"
# What a run leaves in its job folder (job.log and Hydra's .hydra/ aside).
JOB_OUTPUTS = (RESULT_FILE, PER_IMAGE_FILE, READOUT_FILE, TRAIN_LOG, PREDICTIONS_PNG, PREDICTIONS_NPZ, CHANNELS_CSV,
               CHANNELS_PNG, PROBEFREE_NPZ, PROBEFREE_PNG)
# A re-run writes into STAGING_DIR and swaps its outputs in only when it succeeds; the
# outputs it replaces go to PREVIOUS_DIR when its configuration changed; a failed re-run
# beside an ok result leaves its result in FAILED_DIR. None of them is a job folder.
STAGING_DIR = ".staging"
PREVIOUS_DIR = "previous"
FAILED_DIR = "failed"
NOT_JOB_DIRS = (STAGING_DIR, PREVIOUS_DIR, FAILED_DIR)
# A sweep folder is owned by one command at a time (posinfo.sweep.lock).
SWEEP_LOCK = ".posinfo_sweep.lock"
SWEEP_OWNER = ".posinfo_sweep.json"
JOB_LOCK = ".posinfo_job.lock"
# cache.memory: where training features live (posinfo.features.placement). auto: device memory when
# the entry takes at most this share of the GPU's free memory, else pinned host memory within the
# host share of the available RAM, else the disk map.
FEATURE_MEMORY = ("auto", "device", "host", "disk")
DEVICE_MEMORY_SHARE = 0.6
HOST_MEMORY_SHARE = 0.5
FUSE_PLAN = ".posinfo_fuse.json"  # the sweep's groups of jobs trained together (posinfo.sweep.fuse)
WARNINGS_DIR = ".posinfo_warnings"  # each warning once per sweep (posinfo.sweep.warnings)

# ----------------------------------------------------------------------------- keys that do not change a job

# Config keys (dotted; a key covers everything below it) that steer how a job runs or
# label it, never what it computes: a change in them never makes a finished job "changed",
# they are left out of job folder names, and the analysis never tells rows apart by them.
RUN_CONTROL_KEYS = ("force", "dry_run", "device", "name", "cache", "experiment_name", "data.num_workers", "data.identity",
                    "sweep")
# Keys that only name something another key already holds: table6's weight files (the
# value of backbone.weights, named by `pretraining`), mind_the_pad's (its rows' backbone.weights) and the
# input set's label and list.
WEIGHT_FILE_KEYS = ("saliency_weights", "segmentation_weights", "pretrained_weights", "lite0_weights", "vgg16_weights")
LABEL_KEYS = (*WEIGHT_FILE_KEYS, "input.name", "input.kinds")
# Override keys a job folder's name leaves out besides the run-control keys and the weight
# files: the preset, which the sweep folder's name already says. The whole list is derived
# from these by posinfo.schema.folder_excluded_keys (Hydra matches exact keys, so every typed
# key below a run-control key is listed there). The input set's kinds stay in the name: they
# change what a job evaluates, and two lists in one folder would replace each other's result.
FOLDER_NAMED_ELSEWHERE = ("experiment",)


def covered_by(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies below one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# ----------------------------------------------------------------------------- environment and places

CACHE_DIR_ENV = "POSINFO_CACHE_DIR"
SWEEP_ID_ENV = "POSINFO_SWEEP_ID"  # set by the sweep summary callback; inherited by workers and Slurm jobs
ISOLATE_ENV = "POSINFO_ISOLATE"
GPU_LOCK_DIR_ENV = "POSINFO_GPU_LOCK_DIR"
DATA_DIR_ENV = "POSINFO_DATA_DIR"  # where `python -m posinfo.datasets fetch` puts datasets, and data=duts reads them


def default_cache_dir() -> Path:
    """``$POSINFO_CACHE_DIR``, else ``~/.cache/posinfo`` (the config's ``cache.dir`` default)."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posinfo"


def default_data_dir() -> Path:
    """``$POSINFO_DATA_DIR``, else ``~/.cache/posinfo-data``: the fetcher's default ``--to`` and data=duts's root."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posinfo-data"


def utc_now() -> str:
    """The one timestamp format of posinfo's files: ISO 8601, UTC, milliseconds.

    Strings of this format sort in time order (the sweep summary compares them).
    """
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
