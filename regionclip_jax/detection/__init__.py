"""Open-vocabulary Faster R-CNN (C4) on a CLIP ResNet: RegionCLIP's detector transfer.

Modules:
  heads.py        OpenVocabFasterRCNN (res4 -> RoIAlign 14x14 -> layer4 + attnpool; bbox_pred), RPNModel
  classifier.py   text_logits: cosine vs frozen class text embeddings / 0.01, zero background logit
  rpn.py          StandardRPNHead, flatten_predictions, find_top_rpn_proposals (static top-k + NMS)
  rpn_loss.py     label_anchors (0.3 / 0.7, 256 @ 50%), rpn_losses
  sampling.py     label_and_sample_proposals (GT appended, IoU 0.5, 512 @ 25%)
  losses.py       focal-scaled / weighted CE, class-agnostic L1 box loss
  postprocess.py  fast_rcnn_inference (softmax K+1, threshold, per-class NMS / soft-NMS, top-k, RPN fusion)
  train_lib.py    step builders (RPN, detector), proposal / region / classify jitted functions
  predictor.py    DetectorPredictor (vocabulary swap without recompiling the backbone)
  builders.py     config -> modules, init, checkpoint loading, text embeddings, export / load_export
  finetune.py     main.py entry points: train_rpn(config, workdir), train_detector(config, workdir)
"""
