"""The VibeVoice dialogue stream: one part of a script (every speaker's voice clip and every line in
one prompt) generated as one stream of audio tokens, handed out in chunks with what resuming needs.

It computes what `VibeVoiceForConditionalGeneration.generate()` computes, step for step and in the
same random-number order (tests/integration/test_vibevoice.py compares the two), with three changes
made for long-form work on a GPU:

- **Chunks and checkpoints.** Every `chunk_tokens` audio tokens (TTS_CHUNK_SECONDS x 7.5) it yields a
  StreamChunk: the chunk's audio, its acoustic latents and semantic features (from which the
  language model's input embeddings are recomputed), and the state at the chunk's end: the CPU
  random-number state (diffusion draws its noise with torch.randn from the CPU generator, on a GPU
  too: the only random draw in the loop) and the acoustic decoder's and semantic encoder's streaming
  padding caches. Nothing else is needed to go on.
- **Resume.** `run(..., resume=Resume)` rebuilds both classifier-free-guidance branches' key/value
  caches by one prefill over the prompt plus the stored embeddings (positive branch) and over
  `audio_bos` plus all but the last stored embedding (negative branch), restores the random state and
  the padding caches, and continues at the next token. The prompt's voice clips are encoded again
  under the part's seed, so their (sampled) features are the same as the first time. A prefill is one
  batched forward where the uninterrupted run made one step per token: equal within rounding
  (measured on the CPU in float32: see README, "VibeVoice engine"), not to the last bit. Storing the
  key/value slices instead would be exact but costs ~57 KB per audio token for the 1.5B model (9x the
  audio's own size); the latents and semantic features cost 0.06x in bf16 (0.12x in float32).
- **Static caches in buckets.** Both branches' caches are StaticCache of a bucketed size (powers of
  two from 1024 up to the model's context, 65,536 for VibeVoice-1.5B), reused while the bucket
  fits, so compiled steps see at most ~7 shapes; on CUDA the language-model steps and the diffusion
  head run under torch.compile(mode="reduce-overhead") (CUDA graphs). cuDNN's attention backend is off
  (measured slower for this loop).

The stream ends at the model's first token that is not a diffusion token (end of audio or end of
text), or after `max_tokens`, or (tests, benchmarks) after exactly `forced_tokens` audio tokens. The
reference would go on stepping the language model after `audio_eos` until `eos`; a new `audio_bos`
there would start a second stretch of audio, which this loop does not follow (say so in the job's
log if it ever matters: `why` is "end of audio").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

TOKENS_PER_SECOND = 7.5
MIN_BUCKET = 1024


@dataclass
class Resume:
    """Where a part stopped: every generated token's latents and semantic features so far (k rows)
    and the state after the k-th token."""
    latents: np.ndarray          # (k, acoustic dim): float32, or bf16 as its raw bits (int16)
    semantic: np.ndarray         # (k, semantic dim), likewise
    state: dict[str, np.ndarray]

    @property
    def tokens(self) -> int:
        return int(self.latents.shape[0])


@dataclass
class StreamChunk:
    audio: np.ndarray            # float32 samples at 24 kHz
    latents: np.ndarray          # this chunk's rows
    semantic: np.ndarray
    state: dict[str, np.ndarray]  # after the chunk's last token
    tokens_end: int              # audio tokens of the part after this chunk
    final: bool                  # the part ends with this chunk
    why: str = ""                # why it ended


def bucket(length: int, limit: int) -> int:
    """Cache size for `length` positions: the next power of two >= 1024, at most the model's context."""
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return min(size, max(limit, length))


class DialogueStream:
    def __init__(self, model: Any, diffusion_steps: int = 10, guidance_scale: float = 1.3,
                 compile: bool | None = None, chunk_tokens: int = 75, cudnn_attention: bool = False):
        self.model = model
        self.cfg = model.config
        self.diffusion_steps = diffusion_steps
        self.guidance_scale = guidance_scale
        self.chunk_tokens = max(1, int(chunk_tokens))
        self.device = model.device
        self.dtype = next(model.parameters()).dtype
        self.compile = (self.device.type == "cuda") if compile is None else compile
        if self.device.type == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
        self.scheduler = model._build_default_noise_scheduler(model.generation_config)
        self.text_config = self.cfg.get_text_config(decoder=True)
        self.context = int(getattr(self.text_config, "max_position_embeddings", 65536))
        self.embed = model.get_input_embeddings()
        self.head = model.model.diffusion_head
        self._cache_pool: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._pos_step = self._lm_step
        self._neg_step = self._lm_step
        self._head = self.head
        if self.compile:
            self._pos_step = torch.compile(self._lm_step, mode="reduce-overhead", fullgraph=False)
            self._neg_step = torch.compile(self._lm_step, mode="reduce-overhead", fullgraph=False)
            self._head = torch.compile(self.head, mode="reduce-overhead", fullgraph=False)

    # ---- pieces ----

    def _lm_step(self, embeds: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cache: Any):
        out = self.model.model.language_model(inputs_embeds=embeds, position_ids=position, attention_mask=mask,
                                              cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1, :]

    def _caches(self, pos_len: int, neg_len: int):
        from transformers import StaticCache
        key = (bucket(pos_len, self.context), bucket(neg_len, self.context))
        if key not in self._cache_pool:
            self._cache_pool.clear()          # one bucket at a time: memory stays flat
            self._cache_pool[key] = (StaticCache(config=self.text_config, max_cache_len=key[0]),
                                     StaticCache(config=self.text_config, max_cache_len=key[1]))
        pos_cache, neg_cache = self._cache_pool[key]
        pos_cache.reset()
        neg_cache.reset()
        return pos_cache, neg_cache, key

    def _sample_latent(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """The diffusion loop with CFG, as the reference's _sample_audio_latent (same randn call)."""
        condition = torch.cat([positive, negative], dim=0)
        latent = torch.randn(condition.shape[0], self.cfg.audio_config.hidden_size).to(condition)
        sched = self.scheduler
        sched.set_timesteps(num_inference_steps=self.diffusion_steps)
        half = latent.shape[0] // 2
        for timestep in sched.timesteps:
            x = latent[:half]
            combined = torch.cat([x, x], dim=0)
            eps = self._head(combined, timestep.repeat(combined.shape[0]).to(combined), condition=condition)
            cond_eps, uncond_eps = torch.split(eps, half, dim=0)
            guided = uncond_eps + self.guidance_scale * (cond_eps - uncond_eps)
            latent = sched.step(torch.cat([guided, guided], dim=0), timestep, latent).prev_sample
        return latent[:half].unsqueeze(1)

    def _embedding(self, latent: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """The language model's next input: the same two projections the reference adds."""
        inner = self.model.model
        return inner.multi_modal_projector(latent) + inner.semantic_connector(semantic).to(latent.device)

    def _prompt_embeds(self, inputs: dict) -> torch.Tensor:
        """The prompt's input embeddings with the voice clips' features in the audio placeholders
        (what the model's forward builds from input_ids + input_values)."""
        inner = self.model.model
        ids = inputs["input_ids"]
        embeds = self.embed(ids)
        if "input_values" in inputs:
            features = inner.get_audio_features(inputs["input_values"], inputs["padding_mask"]).pooler_output
            mask = inner.get_placeholder_mask(ids, inputs_embeds=embeds, audio_features=features)
            embeds = embeds.masked_scatter(mask, features.to(embeds.device))
        return embeds

    # ---- state ----

    def _np(self, tensor: torch.Tensor) -> np.ndarray:
        """A tensor for a checkpoint file, exactly: bf16 as its raw 16 bits (int16), else float32."""
        if tensor.dtype == torch.bfloat16:
            return tensor.detach().contiguous().view(torch.int16).cpu().numpy().copy()
        return tensor.detach().float().cpu().numpy().copy()

    def _torch(self, array: np.ndarray) -> torch.Tensor:
        array = np.asarray(array)
        if array.dtype == np.int16:
            return torch.from_numpy(array.copy()).view(torch.bfloat16).to(self.device, self.dtype)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device, self.dtype)

    def _cache_arrays(self, cache: Any, prefix: str) -> dict[str, np.ndarray]:
        if cache is None:
            return {f"{prefix}keys": np.array("[]")}
        keys = list(cache.layers)
        out = {f"{prefix}keys": np.array(json.dumps(keys))}
        for i, key in enumerate(keys):
            out[f"{prefix}{i}"] = self._np(cache.layers[key].cache)
        return out

    def _cache_from(self, state: dict[str, np.ndarray], prefix: str) -> Any:
        from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
            VibeVoiceAcousticTokenizerConv1dCacheLayer, VibeVoiceAcousticTokenizerConv1dPaddingCache)
        keys = json.loads(str(state[f"{prefix}keys"]))
        if not keys:
            return None
        cache = VibeVoiceAcousticTokenizerConv1dPaddingCache()
        for i, key in enumerate(keys):
            layer = VibeVoiceAcousticTokenizerConv1dCacheLayer()
            tensor = self._torch(state[f"{prefix}{i}"])
            layer.cache = tensor
            layer.in_channels = tensor.shape[1]
            layer.left_pad = tensor.shape[2]
            layer.is_initialized = True
            cache.layers[key] = layer
        return cache

    def _state(self, acoustic_cache: Any, semantic_cache: Any) -> dict[str, np.ndarray]:
        return {"rng": torch.get_rng_state().numpy().copy(),
                **self._cache_arrays(acoustic_cache, "acoustic_"), **self._cache_arrays(semantic_cache, "semantic_")}

    # ---- the stream ----

    @torch.inference_mode()
    def run(self, inputs: dict, seed: int, max_tokens: int, forced_tokens: int | None = None,
            resume: Resume | None = None) -> Iterator[StreamChunk]:
        """Chunks of the part whose prompt is `inputs` (the processor's tensors, batch 1)."""
        model, cfg = self.model, self.cfg
        input_ids = inputs["input_ids"]
        dev = input_ids.device
        prompt_len = input_ids.shape[1]
        limit = min(max_tokens, forced_tokens) if forced_tokens is not None else max_tokens
        if prompt_len + limit + 2 > self.context:
            limit = self.context - prompt_len - 2
        if limit <= 0:
            raise ValueError(f"the prompt ({prompt_len} tokens) leaves no room in the model's context "
                             f"({self.context} positions)")
        done = resume.tokens if resume is not None else 0
        pos_cache, neg_cache, (pos_cap, neg_cap) = self._caches(prompt_len + limit + 2, limit + 2)
        pos_mask = torch.zeros((1, pos_cap), dtype=torch.long, device=dev)
        neg_mask = torch.zeros((1, neg_cap), dtype=torch.long, device=dev)
        pos_position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        neg_position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        torch.manual_seed(seed)   # the clips' sampled features, then the diffusion noise, in this order
        extra = {k: inputs[k] for k in ("input_values", "padding_mask") if k in inputs}
        bos = self.embed(torch.full((1, 1), cfg.audio_bos_token_id, dtype=torch.long, device=dev))
        acoustic_cache = semantic_cache = None
        if resume is None or done == 0:
            # Prefill: the same forward as the reference's.
            pos_mask[:, :prompt_len] = 1
            neg_mask[:, :1] = 1
            out = model(input_ids=input_ids, attention_mask=pos_mask, cache=pos_cache, use_cache=True,
                        logits_to_keep=1, **extra)
            positive = out.last_hidden_state[:, -1, :]
            logits = out.logits[:, -1, :]
            neg_embeds = bos
        else:
            latents = self._torch(resume.latents)
            semantics = self._torch(resume.semantic)
            # One token at a time, as the run made them (the projections are tiny; batching them
            # would change their rounding).
            generated = torch.cat([self._embedding(latents[i].view(1, 1, -1), semantics[i].view(1, 1, -1))
                                   for i in range(done)], dim=1)
            prompt = self._prompt_embeds(inputs)
            pos_mask[:, :prompt_len + done] = 1
            out = model(inputs_embeds=torch.cat([prompt, generated.to(prompt.dtype)], dim=1),
                        attention_mask=pos_mask, cache=pos_cache, use_cache=True, logits_to_keep=1)
            positive = out.last_hidden_state[:, -1, :]
            logits = out.logits[:, -1, :]
            # The negative branch consumed bos, embeds_0 .. embeds_{k-2} at positions 0..k-1; embeds_{k-1}
            # is its next input, at position k.
            neg_mask[:, :done] = 1
            model.model.language_model(inputs_embeds=torch.cat([bos, generated[:, :done - 1].to(bos.dtype)], dim=1),
                                       attention_mask=neg_mask, cache=neg_cache, use_cache=True)
            neg_mask[:, done] = 1
            neg_embeds = generated[:, done - 1:done]
            torch.set_rng_state(torch.from_numpy(np.array(resume.state["rng"], dtype=np.uint8)))
            acoustic_cache = self._cache_from(resume.state, "acoustic_")
            semantic_cache = self._cache_from(resume.state, "semantic_")
        step = done
        audio: list[torch.Tensor] = []
        lat_rows: list[torch.Tensor] = []
        sem_rows: list[torch.Tensor] = []
        while True:
            why = ""
            if step >= limit:
                why = "the forced token count" if forced_tokens is not None and step >= forced_tokens \
                    else "the part's token limit"
            elif forced_tokens is None:
                token = int(torch.argmax(self._allowed(logits), dim=-1))
                if token != cfg.audio_token_id:
                    why = "end of audio" if token == cfg.audio_eos_token_id else "end of text"
            if why or len(audio) == self.chunk_tokens:
                if audio or why:
                    yield self._chunk(audio, lat_rows, sem_rows, acoustic_cache, semantic_cache, step,
                                      bool(why), why)
                    audio, lat_rows, sem_rows = [], [], []
                if why:
                    return
            neg_position.fill_(step)
            if self.compile:
                torch.compiler.cudagraph_mark_step_begin()
            negative = self._neg_step(neg_embeds, neg_position, neg_mask, neg_cache).clone()
            latent = self._sample_latent(positive, negative)
            scaled = latent / model.model.latent_scaling_factor.to(latent.device) - \
                model.model.latent_bias_factor.to(latent.device)
            decoded = model.model.audio_tower.decode(scaled, padding_cache=acoustic_cache, use_cache=True)
            acoustic_cache = decoded.padding_cache
            audio.append(decoded.audio[0])
            semantic = model.model.semantic_tokenizer_encoder(decoded.audio, padding_cache=semantic_cache,
                                                              use_cache=True)
            semantic_cache = semantic.padding_cache
            lat_rows.append(latent.reshape(1, -1))
            sem_rows.append(semantic.latents.reshape(1, -1))
            embeds = self._embedding(latent, semantic.latents)
            step += 1
            # The positive branch's next step, on the new audio embedding; the negative branch
            # consumes the same embedding at its next step.
            pos_mask[:, prompt_len + step - 1] = 1
            neg_mask[:, step] = 1
            pos_position.fill_(prompt_len + step - 1)
            if step < limit:
                positive = self._pos_step(embeds, pos_position, pos_mask, pos_cache).clone()
                if forced_tokens is None:
                    logits = model.lm_head(positive)
            neg_embeds = embeds

    def _chunk(self, audio, lat_rows, sem_rows, acoustic_cache, semantic_cache, step, final, why):
        wave = torch.cat(audio, dim=-1).float().cpu().numpy().reshape(-1) if audio else np.zeros(0, np.float32)
        lat = self._np(torch.cat(lat_rows)) if lat_rows else np.zeros((0, 0), np.float32)
        sem = self._np(torch.cat(sem_rows)) if sem_rows else np.zeros((0, 0), np.float32)
        return StreamChunk(audio=wave.astype(np.float32), latents=lat, semantic=sem,
                           state=self._state(acoustic_cache, semantic_cache), tokens_end=step, final=final,
                           why=why)

    def _allowed(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        mask = torch.full_like(logits, float("-inf"))
        mask[:, [cfg.audio_bos_token_id, cfg.audio_eos_token_id, cfg.audio_token_id, cfg.eos_token_id]] = 0
        return logits + mask
