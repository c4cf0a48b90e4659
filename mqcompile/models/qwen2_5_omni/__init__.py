"""Qwen2.5-Omni thinker: tiny test model, checkpoint loading, samples, torch.export of the thinker and its towers.

Everything model-specific that mqcompile needs for Qwen2.5-Omni lives in this package; passes never look at layer
names. Every name below is re-exported here, so ``from mqcompile.models.qwen2_5_omni import ...`` is the API.

What it provides and guarantees, and which submodule holds it:

* :mod:`.model`: the shared constants, :func:`tiny_thinker_config` / :func:`build_tiny_thinker` (a structurally
  real, seeded, float32 thinker: vision tower with window and full attention layers, audio tower, GQA decoder with
  M-RoPE, small enough for unit tests), :func:`load_thinker` (a real thinker from a local checkpoint directory,
  thinker-only or full Qwen2.5-Omni config), :func:`thinker_parts` and :func:`modality_token_ids`.
* :mod:`.sample`: :func:`make_sample`, a multimodal sample laid out the way the processor does it, plus every index
  tensor the export needs, precomputed on the host (the HF code computes them with ``.tolist()`` / loops that
  ``torch.export`` cannot trace). The dict keys are exactly the keyword argument names of the exported forward, so
  graph placeholders are named after them; the modality sources are ``input_ids``, ``pixel_values``,
  ``pixel_values_videos`` and ``input_features``. Also :func:`check_sample`, :func:`reference_inputs` and
  :func:`tower_sample`.
* :mod:`.processing`: :func:`real_sample`, a sample of real content (text ids, an RGB image through the Qwen2-VL
  image processor, a waveform through Whisper's feature extractor with the thinker's mel bins).
* :mod:`.forward`: the adapter modules (:class:`ThinkerForExport`, :class:`VisionTowerForExport`,
  :class:`AudioTowerForExport`) that compose the forward from the real submodules (patch embed, linears, norms, MLPs,
  merger, convs, decoder layers, lm_head); no transformers class is patched.
* :mod:`.export`: :func:`export_thinker`, :func:`export_vision_tower`, :func:`export_audio_tower`:
  ``torch.export.ExportedProgram`` s whose linears are ``aten.linear.default`` nodes (no decomposition to core aten
  is run) and whose outputs equal the HF forward.

Attention in the vision and audio towers is written in the adapter as *masked* attention over the packed sequence:
the HF eager code splits the sequence with ``cu_seqlens.tolist()`` (data-dependent sizes, unbacked symbols in the
graph). Here the block-diagonal mask is built in the graph from the ``cu_seqlens`` inputs, so the program has static
shapes, no data-dependent ops, and is numerically the same attention (masked keys get exactly zero weight).

Example::

    model = build_tiny_thinker(seed=0)
    sample = make_sample(model, image_grid=(1, 4, 4), audio_frames=100)
    ep = export_thinker(model, sample)
    logits = ep.module()(**sample)
"""

from .export import export_audio_tower, export_thinker, export_vision_tower
from .forward import AudioTowerForExport, ThinkerForExport, VisionTowerForExport
from .model import (
    AUDIO_TOWER_KEYS,
    OMNI_MODEL_TYPE,
    THINKER_MODEL_TYPE,
    VIDEO_SECONDS_PER_GRID,
    VISION_TOWER_KEYS,
    ThinkerParts,
    build_tiny_thinker,
    load_thinker,
    modality_token_ids,
    thinker_parts,
    tiny_thinker_config,
)
from .processing import real_sample
from .sample import check_sample, make_sample, reference_inputs, tower_sample

__all__ = [
    "THINKER_MODEL_TYPE",
    "OMNI_MODEL_TYPE",
    "VIDEO_SECONDS_PER_GRID",
    "VISION_TOWER_KEYS",
    "AUDIO_TOWER_KEYS",
    "ThinkerParts",
    "ThinkerForExport",
    "VisionTowerForExport",
    "AudioTowerForExport",
    "tiny_thinker_config",
    "build_tiny_thinker",
    "load_thinker",
    "thinker_parts",
    "modality_token_ids",
    "make_sample",
    "real_sample",
    "check_sample",
    "reference_inputs",
    "tower_sample",
    "export_thinker",
    "export_vision_tower",
    "export_audio_tower",
]
