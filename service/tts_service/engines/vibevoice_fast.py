"""The optimised VibeVoice generation path: one segment (speaker turn, batch 1) per call.

It computes what `VibeVoiceForConditionalGeneration.generate()` computes (the reference, kept in
vibevoice.py), step for step and in the same random-number order, but is built for a GPU whose
per-token loop is launch-bound (issue: ~6 600 kernel launches per audio token, GPU busy 12 %):

- static KV caches for both classifier-free-guidance branches at bucketed fixed sizes (reused
  across segments), full-length attention masks and position tensors updated in place, so every
  per-token language-model step has the same shapes;
- cuDNN's attention backend off on CUDA (measured slower in the issue; the benchmark measures both);
- on CUDA (`compile=True`, the default there) the language-model step of each branch and the
  diffusion head wrapped in `torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs: one launch
  per captured graph instead of hundreds of kernels. The diffusers solver step and the acoustic /
  semantic tokenizers' streaming convolutions stay eager (their caches are Python objects);
- per-segment generation (one speaker turn, batch 1), so memory stays flat over a 90-minute script.

On the CPU it runs eagerly; tests compare its waveform with the reference's for the same seed and
the same forced token schedule (tests/integration/test_vibevoice.py).
"""
from __future__ import annotations

from typing import Any

import torch


class FastVibeVoice:
    def __init__(self, model: Any, diffusion_steps: int = 10, guidance_scale: float = 1.3,
                 compile: bool | None = None, cudnn_attention: bool = False):
        self.model = model
        self.cfg = model.config
        self.diffusion_steps = diffusion_steps
        self.guidance_scale = guidance_scale
        self.device = model.device
        self.compile = (self.device.type == "cuda") if compile is None else compile
        if self.device.type == "cuda":
            # The profile: cuDNN's SDPA backend costs ~0.9 ms of CPU per call and made the
            # 1.5B loop slower (137 vs 186-248 ms/token without/with it). Process-wide: the worker
            # process only generates. bench/engine_gpu.py measures both.
            torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
        self.scheduler = model._build_default_noise_scheduler(model.generation_config)
        self.text_config = self.cfg.get_text_config(decoder=True)
        inner = model.model
        self.embed = model.get_input_embeddings()
        self.lm_head = model.lm_head
        self.head = inner.diffusion_head
        self._cache_pool: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._pos_step = self._lm_step
        self._neg_step = self._lm_step
        self._head = self.head
        if self.compile:
            # Separate compiled callables: the two branches have caches of different lengths.
            self._pos_step = torch.compile(self._lm_step, mode="reduce-overhead", fullgraph=False)
            self._neg_step = torch.compile(self._lm_step, mode="reduce-overhead", fullgraph=False)
            self._head = torch.compile(self.head, mode="reduce-overhead", fullgraph=False)

    # ---- pieces ----

    def _lm_step(self, embeds: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cache: Any):
        out = self.model.model.language_model(inputs_embeds=embeds, position_ids=position, attention_mask=mask,
                                              cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1, :]

    def _cache(self, length: int):
        from transformers import StaticCache
        return StaticCache(config=self.text_config, max_cache_len=length)

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

    # ---- one segment ----

    @staticmethod
    def capacity(length: int, bucket: int = 256) -> int:
        """Cache sizes come in buckets so that compiled steps see few distinct shapes."""
        return -(-length // bucket) * bucket

    def _caches(self, pos_len: int, neg_len: int):
        """Static caches (reused across segments of the same bucket) and full-length masks."""
        key = (self.capacity(pos_len), self.capacity(neg_len))
        if key not in self._cache_pool:
            self._cache_pool.clear()          # one bucket at a time: memory stays flat
            self._cache_pool[key] = (self._cache(key[0]), self._cache(key[1]))
        pos_cache, neg_cache = self._cache_pool[key]
        pos_cache.reset()
        neg_cache.reset()
        return pos_cache, neg_cache, key

    @torch.inference_mode()
    def generate(self, inputs: dict, max_audio_tokens: int, forced_audio_tokens: int | None = None) -> torch.Tensor | None:
        """Audio for one segment. `inputs` are the processor's tensors (batch 1). Stops at the model's
        end of audio, or after `forced_audio_tokens` audio tokens (tests and benchmarks)."""
        model, cfg = self.model, self.cfg
        input_ids = inputs["input_ids"]
        dev = input_ids.device
        prompt_len = input_ids.shape[1]
        limit = forced_audio_tokens if forced_audio_tokens is not None else max_audio_tokens
        pos_cache, neg_cache, (pos_cap, neg_cap) = self._caches(prompt_len + limit + 2, limit + 2)
        # Masks over the whole cache (static shapes): 1 up to the current position.
        pos_mask = torch.zeros((1, pos_cap), dtype=torch.long, device=dev)
        neg_mask = torch.zeros((1, neg_cap), dtype=torch.long, device=dev)
        pos_mask[:, :prompt_len] = 1
        neg_mask[:, :1] = 1
        pos_position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        neg_position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        # Prefill: the same forward as the reference's (voice clip embedded, same random draws).
        extra = {k: inputs[k] for k in ("input_values", "padding_mask") if k in inputs}
        out = model(input_ids=input_ids, attention_mask=pos_mask, cache=pos_cache, use_cache=True,
                    logits_to_keep=1, **extra)
        positive = out.last_hidden_state[:, -1, :]
        logits = out.logits[:, -1, :]
        neg_embeds = self.embed(torch.full((1, 1), cfg.audio_bos_token_id, dtype=torch.long, device=dev))
        chunks: list[torch.Tensor] = []
        acoustic_cache = semantic_cache = None
        step = 0
        while step < limit:
            if forced_audio_tokens is None:
                token = int(torch.argmax(self._allowed(logits), dim=-1))
                if token != cfg.audio_token_id:
                    break
            # The negative (unconditional) branch: one step on the embedding the positive branch used last.
            neg_position.fill_(step)
            if self.compile:
                # CUDA graphs reuse their output memory: one "step" per token, outputs kept by copy.
                torch.compiler.cudagraph_mark_step_begin()
            negative = self._neg_step(neg_embeds, neg_position, neg_mask, neg_cache).clone()
            latent = self._sample_latent(positive, negative)
            scaled = latent / model.model.latent_scaling_factor.to(latent.device) - \
                model.model.latent_bias_factor.to(latent.device)
            audio = model.model.audio_tower.decode(scaled, padding_cache=acoustic_cache, use_cache=True)
            acoustic_cache = audio.padding_cache
            chunks.append(audio.audio[0])
            semantic = model.model.semantic_tokenizer_encoder(audio.audio, padding_cache=semantic_cache, use_cache=True)
            semantic_cache = semantic.padding_cache
            embeds = (model.model.multi_modal_projector(latent)
                      + model.model.semantic_connector(semantic.latents).to(latent.device))
            step += 1
            if step >= limit:
                break
            # The positive branch's next step, on the new audio embedding; the negative branch
            # consumes the same embedding at its next step.
            pos_mask[:, prompt_len + step - 1] = 1
            neg_mask[:, step] = 1
            pos_position.fill_(prompt_len + step - 1)
            positive = self._pos_step(embeds, pos_position, pos_mask, pos_cache).clone()
            neg_embeds = embeds
            if forced_audio_tokens is None:
                logits = self.lm_head(positive)
        return torch.cat(chunks, dim=-1) if chunks else None

    def _allowed(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        mask = torch.full_like(logits, float("-inf"))
        mask[:, [cfg.audio_bos_token_id, cfg.audio_eos_token_id, cfg.audio_token_id, cfg.eos_token_id]] = 0
        return logits + mask
