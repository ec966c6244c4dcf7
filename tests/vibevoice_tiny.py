"""A tiny random VibeVoice model + processor, saved to a folder and loaded back through the same
`from_pretrained` path as a real checkpoint. No weights can be downloaded here; random weights in
the real architecture are what CPU tests can run (~100k parameters, a few ms per audio token).

Random weights never choose audio tokens, so tests force N audio tokens per segment with
TTS_VIBEVOICE_FORCE_AUDIO_TOKENS (the engine's documented test/benchmark knob)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SPECIAL = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"]
SAMPLES_PER_TOKEN = 40  # 2 * 4 * 5: the tiny acoustic tokenizer's downsampling


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["Transform the text provided by various speakers into speech output.",
              " Voice input:\n Speaker 0: Text input: Speech output:", "hello world, this is a test."]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL[1:])
    return fast


def build_tiny_vibevoice(folder: Path, voices: int = 2, seed: int = 0, context_gain: float = 1.0,
                         audio_gain: float = 1e5) -> Path:
    """`audio_gain`: the acoustic decoder's output layer scaled by it. At random init its audio peaks
    near 1e-6, below 16-bit PCM's step (3e-5): every served WAV would be silence, equal to any other;
    scaled, a tenth of full scale, so comparing served audio compares something.
    `context_gain`: the language model's weight matrices scaled by it. At 1 (random init) each
    position's hidden state is mostly its own input and a one-ulp change in an earlier input vanishes in
    bf16 rounding; at 16 attention mixes strongly enough that a missing or inexact cache entry shows."""
    import torch
    from transformers import VibeVoiceConfig, VibeVoiceForConditionalGeneration, VibeVoiceProcessor
    from transformers.models.vibevoice_acoustic_tokenizer import VibeVoiceAcousticTokenizerFeatureExtractor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(folder)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    acoustic = dict(hidden_size=8, num_filters=4, downsampling_ratios=[2, 4, 5], depths=[1, 1, 1, 1], kernel_size=3)
    config = VibeVoiceConfig(
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True),
        audio_config=acoustic,
        semantic_model_config={**acoustic, "hidden_size": 16},
        diffusion_head_config=dict(num_hidden_layers=1, intermediate_size=64),
        pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        audio_bos_token_id=ids["<|vision_start|>"], audio_eos_token_id=ids["<|vision_end|>"],
        audio_token_id=ids["<|vision_pad|>"],
    )
    torch.manual_seed(seed)
    model = VibeVoiceForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.audio_tower.decoder.head.conv.weight.mul_(audio_gain)
        model.model.audio_tower.decoder.head.conv.bias.mul_(audio_gain)
    if context_gain != 1.0:
        with torch.no_grad():
            for name, weight in model.model.language_model.named_parameters():
                if weight.dim() == 2 and "embed" not in name:
                    weight.mul_(context_gain)
    model.save_pretrained(folder)
    extractor = VibeVoiceAcousticTokenizerFeatureExtractor(pad_to_multiple_of=SAMPLES_PER_TOKEN)
    VibeVoiceProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    # Voice-reference clips: the engine offers one voice per file in voices/.
    rng = np.random.default_rng(seed)
    (folder / "voices").mkdir(exist_ok=True)
    t = np.arange(24000 // 2) / 24000
    for i in range(voices):
        clip = 0.3 * np.sin(2 * np.pi * (140 + 90 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / "voices" / f"speaker{i + 1}.wav", clip.astype(np.float32), 24000)
    return folder


if __name__ == "__main__":
    import sys
    print(build_tiny_vibevoice(Path(sys.argv[1])))


class _Scripted:
    """lm_head wrapped so the model speaks a set schedule: the real head's logits plus a large bias on
    the token the schedule names for the next position (read from the language model's cache length,
    so a resumed run and transformers' generate() see the same schedule as an uninterrupted run)."""

    def __init__(self, model, schedule: list[int], prompt_len: int):
        import torch
        self.real = model.lm_head
        self.schedule = schedule
        self.prompt_len = prompt_len
        self.seen = prompt_len
        self.torch = torch
        self.hook = model.model.language_model.register_forward_hook(self._saw, with_kwargs=True)

    def _saw(self, _module, _args, _kwargs, output):
        # The positive branch's forwards only: its cache holds the prompt (the negative branch's, a few
        # tokens since its last restart, is run after it at a chunk boundary).
        if getattr(output, "cache", None) is not None and int(output.cache.get_seq_length()) >= self.prompt_len:
            self.seen = int(output.cache.get_seq_length())

    def __call__(self, hidden):
        logits = self.real(hidden)
        n = min(max(self.seen - self.prompt_len, 0), len(self.schedule) - 1)
        bias = self.torch.zeros_like(logits)
        bias[..., self.schedule[n]] = 1e4
        return logits + bias


def script_speech(model, schedule: list[int], prompt_len: int):
    """Make `model` choose `schedule`'s tokens in order (a stand-in for a trained checkpoint's own
    choices: speak, pause, speak again, end); returns a function that undoes it."""
    import torch
    scripted = _Scripted(model, schedule, prompt_len)

    class Head(torch.nn.Module):
        def forward(self, hidden):
            return scripted(hidden)

    real = model.lm_head
    model.lm_head = Head()

    def undo():
        scripted.hook.remove()
        model.lm_head = real
    return undo
