"""RegionCLIP pretraining configs.

    python -m regionclip_jax.main --config=configs/pretrain.py              # shapes world, CPU, minutes
    python -m regionclip_jax.main --config=configs/pretrain.py:rn50_cc3m    # official RN50 / CC3M
    ... --config.num_steps=100 --workdir=/tmp/run                           # overrides

Presets: `shapes` (default: tiny CLIP ResNets on the procedural shapes world; the job first trains
an image-level CLIP teacher into <workdir>/teacher when none is given, then the base-class RPN
into <workdir>/rpn), `rn50_cc3m`,
`rn50x4_cc3m`, `rn50_coco` (official hyper-parameters; docs/design.md, "Pretraining").
"""

from __future__ import annotations

import ml_collections

from configs import finetune as finetune_configs
from configs.common import select_preset

FROZEN_BN = r"(^|/)(bn\d+|downsample_bn)/"  # = models.clip.FROZEN_BN_REGEX (no jax import here)


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "pretrain"
  c.preset = ""
  c.seed = 0
  c.workdir = ""  # empty: <tmp>/regionclip_jax/pretrain_<preset>, printed at start
  c.num_steps = 600_000
  c.batch_size = 96  # global, images per step
  c.log_every = 50
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.async_checkpoints = True

  c.data = ml_collections.ConfigDict()
  # "shapes_world" | "tsv" (RegionCLIP image/text TSV pairs) | "coco_captions" | "jsonl" |
  # "tfds" | "array_record" (tools/make_pretrain_data); each real source reads its keys below
  # (several TSV / array_record shards: comma-separated paths). README, "Pretraining on your own
  # image-text data".
  c.data.source = "tsv"
  c.data.image_tsv = ""
  c.data.text_tsv = ""
  c.data.coco_captions = ""  # COCO Captions json
  c.data.coco_image_dir = ""
  c.data.jsonl_path = ""  # {"image": path, "captions": [...]} per line
  c.data.image_root = ""  # the JSONL's relative image paths start here; empty: the JSONL's folder
  c.data.tfds_name = ""  # an image-text TFDS dataset prepared as array_record, e.g. "coco_captions"
  c.data.tfds_split = "train"
  c.data.tfds_data_dir = ""  # empty: TFDS's default data_dir
  c.data.tfds_image_key = "image"
  c.data.tfds_caption_key = "captions/text"  # "/" walks into nested features (TFDS coco_captions)
  c.data.array_record_path = ""
  c.data.short_edge_lengths = (640, 672, 704, 736, 768, 800)
  c.data.max_size = 1333
  c.data.flip = True
  # Input at accelerator rates (docs/findings.md, "Input pipeline speed"): grain worker processes
  # per host process (same batches and resumable state as 0 = in-process), read threads in each,
  # uint8 batches normalised on the device, cv2 resizes and reduced-size JPEG decoding, each
  # within the tolerances measured in data/geometry.py and data/images.py.
  c.data.num_workers = 3
  c.data.num_threads = 2
  c.data.normalize_on_host = False
  c.data.resize_backend = "cv2"  # "cv2" | "pil" (detectron2's own)
  c.data.draft_decode = True
  # bad image-text records (an image that does not decode, a row without captions, mismatched TSV
  # keys): "skip" drops and counts them (reported at the end; web-scale pairs always hold some),
  # "strict" stops at the first with one line naming the file and the row
  c.data.on_error = "skip"
  c.data.context_length = 77  # caption / prompt tokens (shapes world: 16 suffices)
  # shapes world only
  c.data.image_size = 64
  c.data.num_train_scenes = 20_000
  c.data.num_eval_scenes = 512
  c.data.max_boxes = 4
  c.data.eval_seed = 12345

  c.model = ml_collections.ConfigDict()
  c.model.student = "RN50"  # models.clip preset name (architecture)
  c.model.teacher = "RN50"
  c.model.student_checkpoint = ""  # any clip.load path; empty: initialise from the teacher
  c.model.teacher_checkpoint = ""  # empty + shapes world: trained by the CLIP stage
  c.model.concepts_file = ""  # concept names ("name,count" rows allowed)
  c.model.concept_embeddings = ""  # .npy [C, D] (tools/extract_concept_features); else computed
  c.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (params stay float32)
  c.model.pooler_resolution = 0  # 0: 2 x attnpool grid (14 for RN50, 18 for RN50x4)
  c.model.roi_method = "separable"
  # RoIs per RoIAlign chunk: 128 holds the official 100 proposals + the global box in one chunk
  # (no lax.map loop): 226.0 against 205.0 images/s for the bf16 RN50 step on an H200, measured
  # together with the teacher in bf16, which alone changed nothing (BENCHMARKS.md, "Pretraining
  # step"); the shapes world's 17 RoIs fit either way
  c.model.roi_chunk_size = 128
  c.model.remat = False
  c.model.trainable = (r"^visual/(layer2|layer3|layer4|attnpool)/",)  # res3, res4, layer4, attnpool
  c.model.frozen = (FROZEN_BN,)

  c.proposals = ml_collections.ConfigDict()
  # Official: a frozen base-class RPN ("rpn": train one with the detection task's stage "rpn").
  # "boxes_jitter" (shapes world: jittered copies of all GT boxes + random boxes) and "random"
  # stand in without one; see pretrain/proposals.py.
  c.proposals.kind = "rpn"
  c.proposals.rpn_checkpoint = ""
  c.proposals.rpn_post_nms_topk = 300
  c.proposals.rpn_nms_thresh = 0.5
  c.proposals.num = 100  # regions per image (official: 100 random of the RPN's top 300)
  c.proposals.jitter_copies = 2
  c.proposals.jitter_scale = 0.15
  c.proposals.min_frac = 0.1
  c.proposals.max_frac = 0.8

  c.loss = ml_collections.ConfigDict()
  c.loss.region_distill = 1.0  # weight; 0 switches the term off
  c.loss.region_contrastive = 1.0
  c.loss.image_text = 1.0
  c.loss.temperature = 0.01
  # True: tau = 1 / the teacher's learned exp(logit_scale). For OpenAI CLIP that scale sits at its
  # clamp of 100, i.e. exactly the official 0.01; a small CLIP trained here learns ~8 (tau ~0.12).
  c.loss.temperature_from_teacher = False
  # True: the image-text term alone uses 1 / the teacher's learned logit scale (region terms keep
  # loss.temperature). Off in the official presets.
  c.loss.image_text_temperature_from_teacher = False
  c.loss.concept_threshold = 0.1
  c.loss.group_size = 3  # images per region-contrastive group (official per-GPU batch)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.002
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 1000
  c.optimizer.warmup_factor = 0.001
  c.optimizer.decay_steps = (300_000, 525_000)
  c.optimizer.decay_factor = 0.1
  c.optimizer.clip_norm = 5.0
  c.optimizer.clip_type = "per_tensor"  # official; "global" as an option

  c.sharding = ml_collections.ConfigDict()
  c.sharding.num_devices = 0  # 0 = every device of the job
  c.sharding.mode = "replicate"  # "replicate" (data parallel) | "fsdp"
  c.sharding.fsdp_min_size = 2**16

  # The image-level CLIP stage that makes a teacher when none is given (shapes world).
  c.teacher_stage = ml_collections.ConfigDict()
  c.teacher_stage.num_steps = 0
  c.teacher_stage.batch_size = 64
  c.teacher_stage.lr = 1e-3
  c.teacher_stage.weight_decay = 0.05
  c.teacher_stage.warmup_steps = 100
  c.teacher_stage.decay_steps = ()
  c.teacher_stage.log_every = 50
  # "train": BN trains as in CLIP (batch statistics, trainable affine), then its statistics are
  # re-estimated on `calibration_images` scenes and frozen. "frozen": BN fixed during the stage.
  c.teacher_stage.batch_norm = "train"
  c.teacher_stage.calibration_images = 512

  # Matched-compute control: the teacher trained further with the image-level CLIP loss for
  # control_steps (0 = off). Region recognition gains are judged against it (docs/design.md,
  # "Shapes world").
  c.control_steps = 0
  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True
  c.eval.batch_size = 64
  return c


def shapes() -> ml_collections.ConfigDict:
  """Embedded default: the whole job (teacher CLIP stage + RegionCLIP) in minutes on 2 CPU cores."""
  c = base()
  c.num_steps = 300
  c.batch_size = 24
  c.log_every = 25
  c.checkpoint_every = 100
  c.data.source = "shapes_world"
  c.data.flip = False
  c.data.num_workers = 0  # scenes are generated, not decoded: in-process is fastest on 2 cores
  c.data.num_threads = 2
  c.data.normalize_on_host = True
  c.data.context_length = 16
  # 2,048 held-out scenes (5,119 GT regions): a paired se of student - teacher of 0.4-0.5 points
  # for a few seconds of evaluation (docs/findings.md, "Main command: wall time against the
  # student's margin")
  c.data.num_eval_scenes = 2048
  c.model.student = "tiny_rn"
  c.model.teacher = "tiny_rn"
  # Official proposals: a frozen class-agnostic RPN on base boxes, trained first into
  # <workdir>/rpn with `rpn_stage` (= configs/finetune.py:rpn_shapes) from the teacher's backbone.
  # "boxes_jitter" (jittered GT boxes) skips it.
  c.proposals.kind = "rpn"
  c.proposals.num = 16
  c.proposals.jitter_copies = 2
  c.proposals.min_frac = 0.15
  c.rpn_stage = finetune_configs.rpn_shapes()
  # official lr 0.002 (0.02 lowered the teacher's region top-1 by 2.2 points on seed 0
  # where 0.002 raised it by 1.0; docs/findings.md, "Student stage: learning rate, losses and
  # temperature")
  c.optimizer.lr = 0.002
  c.optimizer.warmup_steps = 30
  c.optimizer.warmup_factor = 0.01
  c.optimizer.decay_steps = (240,)
  # 96,000 scene / caption pairs in contrastive batches of 128: the batch is what separates the
  # concepts' text embeddings (docs/findings.md, "Why the text tower makes twins"); 1,500 steps of
  # 64 (the same images) left 14 pairs at cosine >= 0.95 and a student within 1 se of its teacher
  c.teacher_stage.batch_size = 128
  c.teacher_stage.num_steps = 750
  c.teacher_stage.lr = 2e-3
  c.control_steps = 0
  c.eval.batch_size = 128
  return c


def rn50_cc3m() -> ml_collections.ConfigDict:
  """Official RN50 on CC3M: batch 96, 600k iterations, lr 0.002, steps 300k / 525k, 6,790 concepts."""
  c = base()
  c.data.source = "tsv"
  c.model.student = "RN50"
  c.model.teacher = "RN50"
  return c


def rn50x4_cc3m() -> ml_collections.ConfigDict:
  """Official RN50x4 on CC3M (18 x 18 RoIs into layer4 -> 9 x 9 attnpool grid)."""
  c = rn50_cc3m()
  c.model.student = "RN50x4"
  c.model.teacher = "RN50x4"
  return c


def rn50_coco() -> ml_collections.ConfigDict:
  """Official RN50 on COCO Captions (4,764 concepts); same optimiser schedule."""
  c = base()
  c.data.source = "coco_captions"
  return c


PRESETS = {
    "shapes": shapes,
    "rn50_cc3m": rn50_cc3m,
    "rn50x4_cc3m": rn50x4_cc3m,
    "rn50_coco": rn50_coco,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return select_preset(arg, PRESETS, "shapes", "configs/pretrain.py")
