"""Inference wrapper: proposals (frozen RPN or given boxes) -> region features -> detections.

Two jitted programs: `regions` (backbone + RoI head + box deltas; independent of the vocabulary)
and `classify` (text-embedding classifier + post-processing; cheap). Swapping the vocabulary
re-runs / recompiles only the second one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.detection.heads import OpenVocabFasterRCNN, RPNModel
from regionclip_jax.detection.settings import InferenceSettings, RPNSettings
from regionclip_jax.detection.inference import make_classify_fn, make_proposal_fn, make_region_fn
from regionclip_jax.data.transforms import normalize_batch


@dataclasses.dataclass
class DetectorPredictor:
  det: OpenVocabFasterRCNN
  variables: Any
  inference: InferenceSettings = InferenceSettings()
  rpn: Optional[RPNModel] = None
  rpn_variables: Any = None
  anchor_generator: Any = None
  rpn_settings: RPNSettings = RPNSettings()
  # the frozen pretrained init (same module) for `inference.pretrained_score_weights`
  pretrained_variables: Any = None

  def __post_init__(self):
    if (self.inference.pretrained_score_weights is None) != (self.pretrained_variables is None):
      raise ValueError(
          "DetectorPredictor: inference.pretrained_score_weights and "
          "pretrained_variables go together (the score ensemble needs both)"
      )

  @functools.cached_property
  def _regions(self):
    return make_region_fn(self.det)

  @functools.cached_property
  def _classify(self):
    return make_classify_fn(self.inference)

  @functools.cached_property
  def _classify_alone(self):
    return make_classify_fn(dataclasses.replace(self.inference, pretrained_score_weights=None))

  @functools.cached_property
  def _proposals(self):
    if self.rpn is None:
      raise ValueError("DetectorPredictor: no RPN given; pass boxes (e.g. ground truth) instead")
    return make_proposal_fn(self.rpn, self.anchor_generator, self.rpn_settings, training=False)

  def without_ensemble(self) -> "DetectorPredictor":
    """The same detector scored alone (official inference). Shares the compiled proposal and
    region programs, so only the cheap classifier compiles again."""
    alone = dataclasses.replace(
        self,
        inference=dataclasses.replace(self.inference, pretrained_score_weights=None),
        pretrained_variables=None,
    )
    # functools.cached_property values live in __dict__; the alone classifier of `also_alone`
    # is this predictor's classifier
    shared = {"_regions": "_regions", "_proposals": "_proposals", "_classify_alone": "_classify"}
    for name, as_name in shared.items():
      if name in self.__dict__:
        alone.__dict__[as_name] = self.__dict__[name]
    return alone

  def proposals(self, images, image_sizes):
    """-> (boxes [N,P,4], objectness logits [N,P], valid [N,P]) from the frozen RPN."""
    return self._proposals(self.rpn_variables, jnp.asarray(images), jnp.asarray(image_sizes))

  def region_outputs(self, images, boxes):
    """-> (region_feats [N,R,D], deltas [N,R,4]) for given boxes."""
    return self._regions(self.variables, jnp.asarray(images), jnp.asarray(boxes, jnp.float32))

  def __call__(
      self, images, image_sizes, text_emb, boxes=None, box_valid=None, seen=None, also_alone=False
  ) -> dict:
    """images [N,S,S,3] CLIP-normalised float or uint8, image_sizes [N,2] (h, w), text_emb [K,D]; boxes [N,R,4]
    + box_valid [N,R] to classify given regions (e.g. GT, zero-shot protocol), else RPN proposals;
    seen [K] bool: the classes the detector was trained on (needed by the score ensemble only).
    -> numpy dict `boxes` [N,T,4], `scores`, `classes`, `valid`, `roi_index` [N,T]. `also_alone`
    (with the score ensemble): plus "alone", the same dict for the detector scored alone from the
    same proposals and region features, which spares `without_ensemble()` a second pass."""
    image_sizes = jnp.asarray(image_sizes, jnp.float32)
    # uint8 batches (real presets' host pipelines) are normalised here, float ones pass through
    images = normalize_batch({"image": jnp.asarray(images), "image_size": image_sizes})["image"]
    objectness = None
    if boxes is None:
      boxes, objectness, box_valid = self.proposals(images, image_sizes)
      if self.inference.rpn_fusion is None:
        objectness = None
    elif box_valid is None:
      box_valid = jnp.ones(jnp.shape(boxes)[:2], bool)
    feats, deltas = self.region_outputs(images, boxes)
    extra = ()
    if self.pretrained_variables is not None:
      k = jnp.shape(text_emb)[0]
      if seen is None or np.shape(seen) != (k,):
        raise ValueError(
            f"DetectorPredictor: the score ensemble needs seen [K={k}] bool (which "
            f"classes were trained on), got {None if seen is None else np.shape(seen)}"
        )
      pre, _ = self._regions(self.pretrained_variables, images, jnp.asarray(boxes, jnp.float32))
      extra = (pre, jnp.asarray(seen, bool))
    args = (
        feats,
        deltas,
        jnp.asarray(boxes, jnp.float32),
        jnp.asarray(box_valid),
        image_sizes,
        jnp.asarray(text_emb, jnp.float32),
        objectness,
    )
    out = dict(self._classify(*args, *extra))
    if also_alone and extra:
      out["alone"] = self._classify_alone(*args)
    return jax.tree.map(np.asarray, out)
