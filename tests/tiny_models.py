"""Tiny random models shared by the adapter, checkpoint-converter and pass tests, and the recipes that the tests
of unusual linears run each model under (not a test module)."""

import torch

from mqcompile import recipes

_ROT = (recipes.Rotate(),)
_MQ = (recipes.DABC(), recipes.MDQFO(ste_steps=2))
# one of each pass combination that touches weights: every algorithm pass runs under at least one
RECIPES = {
    "rtn": recipes.RTN,
    "smoothquant": recipes.SMOOTHQUANT,
    "rotate": _ROT,
    "morphoquant+rotate": _MQ + _ROT,
    "morphoquant+rotate+block": _MQ + _ROT + (recipes.BlockMDQFO(steps=2),),
    "rotate+gptq": _ROT + (recipes.GPTQ(),),
}


def tiny_whisper(seed: int = 0, vocab_size: int = 96, end_id: int = 94, start_id: int = 95):
    """A tiny random Whisper (float32, eval, eager): d_model 64, 2+2 layers, 32 mel frames, a 96-token vocabulary
    (``end_id`` pads, begins and ends, ``start_id`` starts the decoder) unless told otherwise."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=8,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=16,
        max_target_positions=32,
        pad_token_id=end_id,
        bos_token_id=end_id,
        eos_token_id=end_id,
        decoder_start_token_id=start_id,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = WhisperForConditionalGeneration._from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_dinov2(seed=0):
    from transformers import Dinov2Model

    from mqcompile.evaluation.checkpoints.dinov2 import dinov2_small_config

    torch.manual_seed(seed)
    config = dinov2_small_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=70)
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # make every parameter distinctive (layer scales and norms start at constants)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tiny_gpt2(seed: int = 0):
    """A tiny random GPT-2 (float32, eval): 2 layers, d_model 64, 128-token vocabulary; its attention and MLP
    projections are ``Conv1D`` (``addmm`` with a ``[in, out]`` weight), the tied output head an ``nn.Linear``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0, use_cache=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.eval()


def tiny_qwen2(vocab_size: int = 256, seed: int = 0):
    """A tiny random Qwen2 causal LM (float32, eval): hidden 64, 2 layers, 4 heads / 2 KV heads, tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).eval()
