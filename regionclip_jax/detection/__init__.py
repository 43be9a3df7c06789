"""Open-vocabulary Faster R-CNN (C4) on a CLIP ResNet: RegionCLIP's detector transfer.

Modules:
  heads.py        OpenVocabFasterRCNN (res4 -> RoIAlign 14x14 -> layer4 + attnpool; bbox_pred),
                  RPNModel
  fpn.py          FPN variant of the detector and the RPN
  offline_rpn.py  DetectronRPN: the official offline RPNs (detectron2 R-50 C4 / FPN + RPN head)
  classifier.py   text_logits: cosine vs frozen class text embeddings / 0.01, zero background logit
  rpn.py          StandardRPNHead, flatten_predictions, find_top_rpn_proposals (static top-k + NMS)
  rpn_loss.py     label_anchors (0.3 / 0.7, 256 @ 50%), rpn_losses
  sampling.py     label_and_sample_proposals (GT appended, IoU 0.5, 512 @ 25%)
  losses.py       focal-scaled / weighted CE, class-agnostic L1 box loss
  postprocess.py  fast_rcnn_inference (softmax K+1, threshold, per-class NMS / soft-NMS, top-k,
                  RPN fusion)
  settings.py     RPN / RoI head / inference settings dataclasses (the one source of their defaults)
  train_lib.py    training losses and step builders (RPN, detector)
  inference.py    jitted inference programs: RPN proposals, region features, text classification
  predictor.py    DetectorPredictor (vocabulary swap without recompiling the backbone)
  builders.py     config -> modules, init, backbone weights, settings, text embeddings
  export.py       export_model / load_export / load_rpn: trained detectors and RPNs on disk;
                  export_detectron2_rpn: an official offline RPN .pth -> an RPN export;
                  export_regionclip_detector: an official fine-tuned detector -> an export
  data.py         config -> record sources and transforms, BaseLabelMap (base-only training)
  evaluate.py     COCO-style AP over a source (pycocotools), example grids
  zero_shot.py    zero-shot detection (the pretrained model as detector), ZeroShotDetector
  exemplars.py    classes given by example boxes: their region embeddings as class embeddings
  finetune.py     the tasks: train_rpn(config, workdir), train_detector(config, workdir),
                  zero_shot_detection(config)
  run.py          main.py entry for task "detection" (config.stage "rpn" | "finetune")
"""
