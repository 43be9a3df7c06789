"""Open-vocabulary detector transfer (docs/design.md, "Detector transfer") and its offline RPN.

    python -m regionclip_jax.main --config=configs/finetune.py            # shapes (default)
    python -m regionclip_jax.main --config=configs/finetune.py:coco_ovd_rn50
    python -m regionclip_jax.main --config=configs/finetune.py:rpn_shapes  # train the offline RPN

Presets: shapes (default), rpn_shapes, coco_ovd_rn50, coco_ovd_rn50x4, lvis_rn50, rpn_coco,
rpn_lvis, custom (your own COCO-format dataset: RPN, detector, AP and proposal recall in one job),
coco_transfer / lvis_transfer (train_transfer_learning.sh: a released pretrained checkpoint, RPN
and embeddings; README, "Using the official RegionCLIP checkpoints").
`task` "detection" (main.py -> detection.run), `stage`: "finetune" (detector on base classes,
proposals from a frozen RPN) or "rpn" (class-agnostic RPN on base boxes). Official values are the
defaults; deviations say so. The rpn / roi_heads / test defaults are those of the settings
dataclasses (regionclip_jax/detection/settings.py, their one definition); presets write only what
they change.
"""

from __future__ import annotations

import dataclasses

import ml_collections as mlc

from configs.common import select_preset
from regionclip_jax.detection.settings import InferenceSettings, RoIHeadSettings, RPNSettings


def _settings_section(settings, drop=()) -> mlc.ConfigDict:
  """Every field of a settings dataclass at its default (`drop`: fields another section holds)."""
  return mlc.ConfigDict({k: v for k, v in dataclasses.asdict(settings).items() if k not in drop})


def _base() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.task = "detection"  # main.py -> regionclip_jax.detection.run
  c.stage = "finetune"  # "finetune" | "rpn"
  c.seed = 0
  c.workdir = ""

  c.model = mlc.ConfigDict()
  c.model.clip_preset = "RN50"  # architecture when no checkpoint says otherwise
  c.model.init_checkpoint = ""  # RegionCLIP pretrain workdir / converted CLIP dir / .pt / .pth
  c.model.init_source = ""  # force the checkpoint format (see models.checkpoints)
  c.model.text_checkpoint = ""  # CLIP whose text tower embeds class names; "" = init_checkpoint
  c.model.freeze_at = 2  # official FREEZE_AT 2: stem + res2 frozen
  # regexes of further parameters that detector fine-tuning leaves at their init, e.g.
  # ("attnpool/",) (none officially; benchmarks/transfer_analysis.py compares such variants)
  c.model.frozen = ()
  c.model.pooler_resolution = 14  # RoIAlign output: 14 (RN50), 18 (RN50x4), 2 * attnpool grid
  c.model.sampling_ratio = 0  # adaptive, official
  c.model.roi_chunk_size = 64
  c.model.dtype = "float32"
  c.model.head = "c4"  # "c4" (official) | "fpn" (detection/fpn.py: FPN + 2FC box head)
  c.model.fpn = mlc.ConfigDict()  # FPN head settings (used when head == "fpn"), detectron2 values
  c.model.fpn.fpn_channels = 256
  c.model.fpn.pooler_resolution = 7
  c.model.fpn.canonical_box_size = 224.0
  c.model.fpn.fc_dim = 1024

  c.rpn = _settings_section(RPNSettings())
  c.rpn.checkpoint = ""  # workdir of a stage="rpn" run (the frozen offline RPN)
  c.rpn.clip_preset = ""  # RPN backbone; "" = model.clip_preset
  c.rpn.init_checkpoint = ""  # RPN backbone init (stage="rpn"); "" = model.init_checkpoint
  c.rpn.anchor_sizes = (32, 64, 128, 256, 512)
  c.rpn.aspect_ratios = (0.5, 1.0, 2.0)
  c.rpn.stride = 16

  c.roi_heads = _settings_section(RoIHeadSettings())
  # a CLIP checkpoint: temperature = 1 / its learned logit scale (OpenAI CLIP: 0.01, the default)
  c.roi_heads.temperature_from_checkpoint = ""

  # the classifier temperature is roi_heads' (the one the detector trains with)
  c.test = _settings_section(InferenceSettings(), drop=("temperature",))
  # None is spelled "" / () here, so --config.test.* can set these fields
  c.test.rpn_fusion = ""  # "" | "raw_logit" (official MULTIPLY_RPN_SCORE) | "sigmoid"
  c.test.pretrained_score_weights = ()  # (w_seen, w_unseen) score ensemble; () = detector alone
  c.test.eval_split = "coco_ovd"
  c.test.batch_size = 1
  c.test.num_examples = 0  # > 0: <workdir>/examples.png, GT vs. detections on test images
  # class-agnostic AR@100/300/1000 of the RPN on the test split's base / novel boxes, before the
  # detector trains (detection/run.py), into metrics.json
  c.test.proposal_recall = False

  c.data = mlc.ConfigDict()
  c.data.name = "coco"  # "coco" (COCO/LVIS-format json + image dir) | "shapes_world"
  c.data.train_annotations = ""
  c.data.train_images = ""
  c.data.test_annotations = ""
  c.data.test_images = ""
  # training classes: a split name ("coco_ovd", "lvis"), "all" (every category of the train
  # json), "a,b,c" or "@file.txt" (one per line; detection/data.py, data/coco.py)
  c.data.base_classes = ""
  # the test vocabulary, same syntax; "" = every category of the test json (a split name: the
  # split's own base + novel classes); novel = the test classes not trained on
  c.data.test_classes = ""
  c.data.on_error = "strict"  # bad records: "strict" stops, "skip" drops + counts (data.validation)
  c.data.train_embeddings = ""  # .npy / .pth [K_base, D] embeddings of the training classes
  c.data.test_embeddings = ""  # .npy / .pth [K_all, D]; "" = compute from class names (prompts)
  c.data.short_edge_lengths = (640, 672, 704, 736, 768, 800)
  c.data.test_size = 800
  c.data.max_size = 1333
  c.data.max_boxes = 100
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

  c.optimizer = mlc.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.002
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 0.0  # detectron2 default: no gradient clipping in the transfer
  c.optimizer.warmup_steps = 5000
  c.optimizer.warmup_factor = 0.001
  c.optimizer.decay_steps = (60000, 80000)

  c.train = mlc.ConfigDict()
  c.train.batch_size = 16
  c.train.num_devices = 0  # 0 = every device of the job
  c.train.num_steps = 90000
  c.train.log_every = 20
  c.train.checkpoint_every = 5000
  c.train.eval_every = 0  # 0: evaluate at the end only
  return c


def _coco_ovd(preset: str = "RN50") -> mlc.ConfigDict:
  c = _base()
  c.model.clip_preset = preset
  c.model.pooler_resolution = 14 if preset == "RN50" else 18
  c.data.base_classes = "coco_ovd"
  c.test.eval_split = "coco_ovd"
  return c


def coco_ovd_rn50() -> mlc.ConfigDict:
  return _coco_ovd("RN50")


def coco_ovd_rn50x4() -> mlc.ConfigDict:
  return _coco_ovd("RN50x4")


def lvis_rn50() -> mlc.ConfigDict:
  c = _coco_ovd("RN50")
  c.data.base_classes = "lvis"
  c.roi_heads.focal_gamma = None
  c.roi_heads.bg_weight = 0.8
  c.test.score_thresh = 0.02
  c.test.topk = 300
  c.test.eval_split = "lvis"
  c.data.max_boxes = 300
  return c


def rpn_coco() -> mlc.ConfigDict:
  c = _coco_ovd("RN50")
  c.stage = "rpn"
  return c


def rpn_lvis() -> mlc.ConfigDict:
  c = lvis_rn50()
  c.stage = "rpn"
  return c


def shapes() -> mlc.ConfigDict:
  """The embedded miniature: 64 px shapes-world scenes, tiny CLIP ResNet, base-class training,
  AP50 novel / base / all. RPN and proposal counts scaled to the 4x4 res4 map."""
  c = _base()
  c.model.clip_preset = "tiny_rn"
  c.model.pooler_resolution = 4  # 2 * attnpool grid of tiny_rn (64 px -> 2x2)
  c.rpn.anchor_sizes = (12, 20, 32, 48)
  c.rpn.batch_size_per_image = 64
  c.rpn.pre_nms_topk_train = 192
  c.rpn.post_nms_topk_train = 64
  c.rpn.pre_nms_topk_test = 192
  c.rpn.post_nms_topk_test = 50
  c.roi_heads.batch_size_per_image = 32
  c.test.topk = 20
  c.test.max_candidates = 400
  c.test.eval_split = "shapes"
  c.test.batch_size = 32
  c.test.num_examples = 4
  # deviation: the sane sigmoid form of the official RPN-score fusion; on 64 px scenes unfused
  # scores rank clutter boxes with objects (seed 0: base AP50 12 -> 30;
  # docs/findings.md, "Claim b: why novel AP50 was near zero")
  c.test.rpn_fusion = "sigmoid"
  # the miniature's scores as reported so far (its figures); the official evaluation reports the
  # fused score (test.report_unfused False, the default)
  c.test.report_unfused = True
  # deviation: base-only fine-tuning of the tiny model halves novel AP50 from every init
  # (docs/findings.md, "The score ensemble"), so novel classes are scored with the frozen init as
  # well, with F-VLM's published weights (not tuned here); metrics.json keeps the detector alone beside it
  c.test.pretrained_score_weights = (0.35, 0.65)
  c.data.name = "shapes_world"
  c.data.num_train = 2048
  c.data.num_test = 256
  c.data.image_size = 64
  c.data.max_boxes = 8
  c.data.flip = False
  c.data.num_workers = 0  # generated scenes: in-process is fastest on 2 cores
  c.data.num_threads = 4
  c.data.normalize_on_host = True
  # zero-shot detection protocol (Bansal et al. 2018): RPN and detector train on scenes without
  # novel objects; with them, both learn "crescent = background" (docs/findings.md,
  # "Claim b: why novel AP50 was near zero")
  c.data.exclude_novel_images = True
  c.optimizer.name = "adamw"  # deviation for the miniature: fast on CPU from scratch
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.decay_steps = (800,)
  c.train.batch_size = 16
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  return c


def rpn_shapes() -> mlc.ConfigDict:
  c = shapes()
  c.stage = "rpn"
  c.train.num_steps = 1000
  c.optimizer.decay_steps = (800,)
  return c


def custom() -> mlc.ConfigDict:
  """Your own COCO-format train / test json + image folders (README, "Your own COCO-format
  dataset"): set data.train_annotations / train_images / test_annotations / test_images,
  data.base_classes and model.init_checkpoint. With rpn.checkpoint empty the job trains the
  class-agnostic RPN on the base boxes into <workdir>/rpn first (`rpn_stage.train` /
  `rpn_stage.optimizer`), reports its proposal recall, then fine-tunes the detector: AP50 and AP
  novel / base / all and AR@100/300/1000 base / novel in <workdir>/metrics.json. Official
  detector settings otherwise (RN50 C4, the coco_ovd schedule)."""
  c = _base()
  c.data.base_classes = "all"  # fully supervised unless told which classes are base
  c.model.pooler_resolution = 0  # 2 x the init checkpoint's attention-pool grid (detection/run.py)
  c.test.proposal_recall = True
  c.rpn_stage = mlc.ConfigDict()
  # the RPN trains on the job's own data and model; only its schedule is its own (official
  # detectron2 RPN schedule = the detector's)
  c.rpn_stage.train = c.train.copy_and_resolve_references()
  c.rpn_stage.optimizer = c.optimizer.copy_and_resolve_references()
  return c


def _transfer(split: str) -> mlc.ConfigDict:
  """train_transfer_learning.sh: fine-tuning from a released pretrained checkpoint
  (`model.init_checkpoint`, MODEL.WEIGHTS) with a released offline RPN (`rpn.checkpoint`: the
  .pth itself or its conversion; MODEL.CLIP.BB_RPN_WEIGHTS) and released class embeddings
  (`data.train_embeddings`, MODEL.CLIP.TEXT_EMB_PATH; `data.test_embeddings`,
  OPENSET_TEST_TEXT_EMB_PATH). The architecture comes from the checkpoint: the RoI pooler is 2 x
  its attention-pool grid (the script's RN50x4 POOLER_RESOLUTION 18), the embedding width its
  output (TEXT_EMB_DIM 640)."""
  c = _coco_ovd("RN50") if split == "coco_ovd" else lvis_rn50()
  c.model.pooler_resolution = 0  # from model.init_checkpoint (detection/run.py)
  # the offline RPN runs in eval mode while the detector trains (clip_rcnn.py CLIPFastRCNN
  # .forward): its config's test top-k, not the train one
  topk = (6000, 1000) if split == "coco_ovd" else (1000, 1000)
  c.rpn.pre_nms_topk_train, c.rpn.post_nms_topk_train = topk
  c.rpn.pre_nms_topk_test, c.rpn.post_nms_topk_test = topk
  return c


def coco_transfer() -> mlc.ConfigDict:
  """COCO OVD: CLIP_fast_rcnn_R_50_C4_ovd.yaml (the coco_ovd_rn50 recipe: 90k steps, 48 base
  classes, test on 65) with rpn_coco_48.pth, the C4 offline RPN of
  mask_rcnn_R_50_C4_1x_ovd_FSD.yaml (6000 / 1000 proposals before / after NMS),
  coco_48_base_cls_emb*.pth and coco_65_cls_emb*.pth."""
  c = _transfer("coco_ovd")
  c.rpn.checkpoint_arch = "c4"  # the script's OFFLINE_RPN_CONFIG (an FPN file is refused)
  return c


def lvis_transfer() -> mlc.ConfigDict:
  """LVIS: CLIP_fast_rcnn_R_50_C4.yaml (866 base classes, 1203 at test; plain CE with
  background weight 0.8, score threshold 0.02, 300 detections, RPN-score fusion at test) with
  its schedule (180k steps, decay at 120k / 160k) and rpn_lvis_866_lsj.pth, the FPN offline RPN
  of mask_rcnn_R_50_FPN_1x.yaml with OFFLINE_RPN_LSJ_PRETRAINED (1000 proposals per level before
  NMS, 1000 after), lvis_866_base_cls_emb*.pth and lvis_1203_cls_emb*.pth. Deviation: uniform
  image sampling (the yaml's RepeatFactorTrainingSampler, threshold 0.001, is not implemented)."""
  c = _transfer("lvis")
  c.rpn.checkpoint_arch = "fpn"  # the script's OFFLINE_RPN_CONFIG (a C4 file is refused)
  c.train.num_steps = 180000  # SOLVER.MAX_ITER
  c.optimizer.decay_steps = (120000, 160000)  # SOLVER.STEPS
  c.test.rpn_fusion = "raw_logit"  # MODEL.CLIP.MULTIPLY_RPN_SCORE True
  return c


PRESETS = {
    "shapes": shapes,
    "rpn_shapes": rpn_shapes,
    "coco_ovd_rn50": coco_ovd_rn50,
    "coco_ovd_rn50x4": coco_ovd_rn50x4,
    "lvis_rn50": lvis_rn50,
    "rpn_coco": rpn_coco,
    "rpn_lvis": rpn_lvis,
    "custom": custom,
    "coco_transfer": coco_transfer,
    "lvis_transfer": lvis_transfer,
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  return select_preset(arg, PRESETS, "shapes", "configs/finetune.py")
