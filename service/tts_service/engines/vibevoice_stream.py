"""The VibeVoice dialogue stream: one part of a script (every speaker's voice clip and every line in
one prompt) generated as one stream of audio tokens, handed out in chunks with what resuming needs.

It follows `VibeVoiceForConditionalGeneration.generate()` token for token and in the same random-number
order (tests/integration/test_vibevoice.py compares the two on the forced and on the natural path):

- **The model's own stopping rule.** The next token is the argmax over audio_bos / audio_eos /
  audio_token / eos. An audio token runs both classifier-free-guidance branches and the diffusion head;
  audio_eos and audio_bos are fed back as text (a pause: speech closed and reopened), and audio_bos
  restarts the negative (unconditional) branch from a fresh context, as upstream resets it; eos ends
  the part. A part also ends at its token limit (audio tokens), or (tests, benchmarks) after exactly
  `forced_tokens` audio tokens (then lm_head is not consulted).
- **Chunks and checkpoints.** Every `chunk_tokens` audio tokens (TTS_CHUNK_SECONDS x 7.5) it yields a
  StreamChunk: the chunk's audio, its acoustic latents and semantic features (from which the language
  model's input embeddings are recomputed), the chunk's token ids (audio and pauses), and the state at
  the chunk's end: the CPU random-number state (diffusion draws its noise with torch.randn from the CPU
  generator, on a GPU too: the only random draw in the loop) and the acoustic decoder's and semantic
  encoder's streaming padding caches.
- **Resume exact by construction.** Inside a chunk the language model steps one token at a time; at
  every chunk boundary, the chunk's inputs go through one batched forward per branch that rewrites the
  chunk's key/value entries (and gives the positive branch's next hidden state). A resumed run
  (`run(..., resume=Resume)`) makes the same calls in the same order: the prompt's prefill, then one
  batched forward per committed chunk and branch; so both runs hold bit-identical caches at the
  boundary and go on identically (tested in bf16). The prompt's voice clips are encoded under
  `clip_seed` (the job's, the same for every part), the diffusion noise then drawn under the part's
  seed; the random state is restored from the checkpoint.
- **Static caches in buckets.** Both branches' caches are StaticCache of a bucketed size (powers of
  two from 1024 up to the model's context, 65,536 for VibeVoice-1.5B), reused while the bucket
  fits, so compiled steps see at most ~7 shapes; on CUDA the language-model steps and the diffusion
  head run under torch.compile(mode="reduce-overhead") (CUDA graphs); the boundary forwards run eager.
  warm_up() compiles every bucket before the engine counts as loaded (no job pays for a compilation).
  cuDNN's attention backend is off (measured slower for this loop).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TOKENS_PER_SECOND = 7.5
MIN_BUCKET = 1024


@dataclass
class Resume:
    """Where a part stopped: every generated token so far (`tokens`: audio tokens and pauses, in
    order), each audio token's latents and semantic features (k rows), and the state after the last."""
    latents: np.ndarray          # (k, acoustic dim): float32, or bf16 as its raw bits (int16)
    semantic: np.ndarray         # (k, semantic dim), likewise
    state: dict[str, np.ndarray]
    token_ids: np.ndarray | None = None   # every generated token id; None: k audio tokens, no pauses

    @property
    def tokens(self) -> int:
        """Audio tokens done."""
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
    token_ids: np.ndarray | None = None   # the chunk's generated token ids (audio and pauses)


# Tokens other than audio a part may generate (pauses: audio_eos, audio_bos) beyond its audio tokens.
PAUSE_TOKENS = 64


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
        self._guidance, self._steps = guidance_scale, diffusion_steps   # this run's (run() sets them)
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

    def _lm_forward(self, embeds: torch.Tensor, start: int, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """The language model over `embeds` at positions start.. (eager: a chunk boundary or a prefill),
        writing their key/value entries into `cache` from `start` on (anything there is rewritten)."""
        held = int(cache.get_seq_length())
        if held > start:
            cache.crop(start - held)
        n = embeds.shape[1]
        position = torch.arange(start, start + n, device=embeds.device).unsqueeze(0)
        mask[:, :start + n] = 1
        out = self.model.model.language_model(inputs_embeds=embeds, position_ids=position, attention_mask=mask,
                                              cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1, :]

    def _caches(self, pos_len: int, neg_len: int):
        key = (bucket(pos_len, self.context), bucket(neg_len, self.context))
        if key not in self._cache_pool:
            self._cache_pool.clear()          # one bucket at a time: memory stays flat
            self._cache_pool[key] = (self._static_cache(key[0]), self._static_cache(key[1]))
        pos_cache, neg_cache = self._cache_pool[key]
        pos_cache.reset()
        neg_cache.reset()
        return pos_cache, neg_cache, key

    def _static_cache(self, size: int) -> Any:
        """A StaticCache allocated now, outside any compiled code: only then does transformers mark its
        tensors as static addresses (CUDA graphs skip a graph whose inputs it mutates otherwise). Its
        first write may then come from a compiled step (the warm-up's, the negative branch's)."""
        from transformers import StaticCache
        tc = self.text_config
        heads = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        cache = StaticCache(config=tc, max_cache_len=size)
        cache.early_initialization(1, heads, head_dim, self.dtype, self.device)
        return cache

    def _sample_latent(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """The diffusion loop with CFG, as the reference's _sample_audio_latent (same randn call)."""
        condition = torch.cat([positive, negative], dim=0)
        latent = torch.randn(condition.shape[0], self.cfg.audio_config.hidden_size).to(condition)
        sched = self.scheduler
        sched.set_timesteps(num_inference_steps=self._steps)
        half = latent.shape[0] // 2
        for timestep in sched.timesteps:
            x = latent[:half]
            combined = torch.cat([x, x], dim=0)
            eps = self._head(combined, timestep.repeat(combined.shape[0]).to(combined), condition=condition)
            cond_eps, uncond_eps = torch.split(eps, half, dim=0)
            guided = uncond_eps + self._guidance * (cond_eps - uncond_eps)
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

    def self_check(self) -> str | None:
        """Why this transformers cannot run the stream, or None: a forward given `cache=` must fill it
        (transformers before 5.24 took the cache as `past_key_values` and silently ignored `cache=`, so
        every step would run with no context and no error)."""
        from transformers import StaticCache
        cache = StaticCache(config=self.text_config, max_cache_len=8)
        embeds = self.embed(torch.tensor([[self.cfg.audio_bos_token_id] * 3], device=self.device))
        mask = torch.zeros((1, 8), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self._lm_forward(embeds, 0, mask, cache)
            held = int(cache.get_seq_length())
        if held != 3:
            import transformers
            return (f"transformers {transformers.__version__} does not fill the key/value cache it is given "
                    f"({held} of 3 positions): the stream needs transformers >= 5.24")
        return None

    # ---- warm-up ----

    def bucket_sizes(self) -> list[int]:
        """Every cache size bucket() can give a branch of this model: what the compiled steps meet."""
        sizes, size = [], MIN_BUCKET
        while size < self.context:
            sizes.append(size)
            size *= 2
        return sizes + [self.context]

    @torch.inference_mode()
    def warm_up(self) -> list[int]:
        """Compile (and on CUDA, capture) both language-model steps for every cache bucket, and the
        diffusion head, before the node says it is ready: otherwise the first chunk of a size not met
        yet, the first after a failover included, waits for torch.compile. Nothing to do when eager.
        Leaves no state a run depends on (run() seeds, resets its caches and sets its masks) and puts
        the CPU random state back. Returns the buckets warmed."""
        if not self.compile:
            return []
        rng = torch.get_rng_state()
        dev = self.device
        x = self.embed(torch.full((1, 1), self.cfg.audio_bos_token_id, dtype=torch.long, device=dev))
        position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        hidden: dict[str, torch.Tensor] = {}
        sizes = self.bucket_sizes()
        for size in sizes:
            caches = self._caches(size, size)
            for name, step, cache in (("pos", self._pos_step, caches[0]), ("neg", self._neg_step, caches[1])):
                mask = torch.zeros((1, size), dtype=torch.long, device=dev)
                mask[:, 0] = 1
                for _ in range(3):   # compile, record the CUDA graph, replay it
                    torch.compiler.cudagraph_mark_step_begin()
                    hidden[name] = step(x, position, mask, cache).clone()
        self._steps = self.diffusion_steps
        self._sample_latent(hidden["pos"], hidden["neg"])
        self._cache_pool.clear()
        torch.set_rng_state(rng)
        return sizes

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
            VibeVoiceAcousticTokenizerConv1dCacheLayer,
            VibeVoiceAcousticTokenizerConv1dPaddingCache,
        )
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
            resume: Resume | None = None, clip_seed: int | None = None, guidance_scale: float | None = None,
            diffusion_steps: int | None = None) -> Iterator[StreamChunk]:
        """Chunks of the part whose prompt is `inputs` (the processor's tensors, batch 1); the guidance
        scale and diffusion steps are the stream's unless given (a job's own)."""
        self._guidance = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        self._steps = self.diffusion_steps if diffusion_steps is None else int(diffusion_steps)
        model, cfg = self.model, self.cfg
        audio_id = cfg.audio_token_id
        input_ids = inputs["input_ids"]
        dev = input_ids.device
        prompt_len = input_ids.shape[1]
        limit = min(max_tokens, forced_tokens) if forced_tokens is not None else max_tokens
        room = self.context - prompt_len - 2
        limit = min(limit, room)
        if limit <= 0:
            raise ValueError(f"the prompt ({prompt_len} tokens) leaves no room in the model's context "
                             f"({self.context} positions)")
        budget = limit if forced_tokens is not None else min(limit + PAUSE_TOKENS, room)
        pos_cache, neg_cache, (pos_cap, neg_cap) = self._caches(prompt_len + budget + 2, budget + 2)
        pos_mask = torch.zeros((1, pos_cap), dtype=torch.long, device=dev)
        neg_mask = torch.zeros((1, neg_cap), dtype=torch.long, device=dev)
        pos_position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        neg_position = torch.zeros((1, 1), dtype=torch.long, device=dev)
        # The clips' sampled features under the job's seed (the same in every part), then the diffusion
        # noise under the part's; with clip_seed == seed, one seed for both, as generate() draws them.
        torch.manual_seed(seed if clip_seed is None else clip_seed)
        prompt = self._prompt_embeds(inputs)
        if clip_seed is not None and clip_seed != seed:
            torch.manual_seed(seed)
        bos = self.embed(torch.full((1, 1), cfg.audio_bos_token_id, dtype=torch.long, device=dev))
        positive = self._lm_forward(prompt, 0, pos_mask, pos_cache)
        # Per branch: the position its next input goes to, and the inputs since the chunk's start (or
        # since the negative branch's last restart) that the boundary forward rewrites.
        pos_len, neg_len = prompt_len, 0
        pos_pending: list[torch.Tensor] = []
        neg_pending: list[torch.Tensor] = []
        last_input = bos          # what the positive branch consumed last (the prompt ends in audio_bos)
        acoustic_cache = semantic_cache = None
        step = generated = 0

        def restart_negative():
            nonlocal neg_len
            neg_cache.reset()
            neg_mask.zero_()
            neg_pending.clear()
            neg_len = 0

        def pause(token: int) -> torch.Tensor:
            """The next input after a pause token: audio_eos closes speech, audio_bos reopens it (and
            restarts the negative branch); either is fed back as text."""
            if token == cfg.audio_bos_token_id:
                restart_negative()
            return self.embed(torch.full((1, 1), token, dtype=torch.long, device=dev))

        def boundary() -> torch.Tensor:
            """One batched forward per branch over the chunk's inputs: the same call in every run."""
            nonlocal pos_len
            start = pos_len - len(pos_pending)
            out = self._lm_forward(torch.cat(pos_pending, dim=1), start, pos_mask, pos_cache)
            if neg_pending:
                self._lm_forward(torch.cat(neg_pending, dim=1), neg_len - len(neg_pending), neg_mask, neg_cache)
            pos_pending.clear()
            neg_pending.clear()
            return out

        if resume is not None and resume.tokens:
            latents = self._torch(resume.latents)
            semantics = self._torch(resume.semantic)
            ids = (np.asarray(resume.token_ids, dtype=np.int64) if resume.token_ids is not None
                   else np.full(resume.tokens, audio_id, dtype=np.int64))
            row = 0
            for token in ids.tolist():
                if token == audio_id:
                    neg_pending.append(last_input)
                    neg_len += 1
                    x = self._embedding(latents[row].view(1, 1, -1), semantics[row].view(1, 1, -1)).to(bos.dtype)
                    row += 1
                else:
                    x = pause(token)
                pos_pending.append(x)
                pos_len += 1
                generated += 1
                if token == audio_id and row % self.chunk_tokens == 0:
                    positive = boundary()
                last_input = x
            if pos_pending or row != resume.tokens:
                raise ValueError("the checkpoint does not end at a chunk boundary")
            step = row
            torch.set_rng_state(torch.from_numpy(np.array(resume.state["rng"], dtype=np.uint8)))
            acoustic_cache = self._cache_from(resume.state, "acoustic_")
            semantic_cache = self._cache_from(resume.state, "semantic_")
        logits = model.lm_head(positive) if forced_tokens is None else None

        audio: list[torch.Tensor] = []
        lat_rows: list[torch.Tensor] = []
        sem_rows: list[torch.Tensor] = []
        chunk_ids: list[int] = []
        while True:
            why = ""
            token = audio_id
            if step >= limit:
                why = "the forced token count" if forced_tokens is not None and step >= forced_tokens \
                    else "the part's token limit"
            elif generated >= budget:
                why = "the part's token limit"
            elif forced_tokens is None:
                token = int(torch.argmax(self._allowed(logits), dim=-1))
                if token == cfg.eos_token_id:
                    why = "end of text"
            if why or len(audio) == self.chunk_tokens:
                if audio or why:
                    yield self._chunk(audio, lat_rows, sem_rows, chunk_ids, acoustic_cache, semantic_cache, step,
                                      bool(why), why)
                    audio, lat_rows, sem_rows, chunk_ids = [], [], [], []
                if why:
                    return
            if token == audio_id:
                neg_position.fill_(neg_len)
                neg_mask[:, neg_len] = 1
                if self.compile:
                    torch.compiler.cudagraph_mark_step_begin()
                negative = self._neg_step(last_input, neg_position, neg_mask, neg_cache).clone()
                neg_pending.append(last_input)
                neg_len += 1
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
                x = self._embedding(latent, semantic.latents).to(bos.dtype)
                step += 1
            else:
                x = pause(token)
            chunk_ids.append(token)
            generated += 1
            pos_pending.append(x)
            pos_len += 1
            last_input = x
            if step >= limit and token == audio_id:
                continue          # the part is over: no next token to compute
            if token == audio_id and step % self.chunk_tokens == 0:
                positive = boundary()
            else:
                pos_mask[:, pos_len - 1] = 1
                pos_position.fill_(pos_len - 1)
                if self.compile:
                    torch.compiler.cudagraph_mark_step_begin()
                positive = self._pos_step(x, pos_position, pos_mask, pos_cache).clone()
            if forced_tokens is None:
                logits = model.lm_head(positive)

    def _chunk(self, audio, lat_rows, sem_rows, chunk_ids, acoustic_cache, semantic_cache, step, final, why):
        wave = torch.cat(audio, dim=-1).float().cpu().numpy().reshape(-1) if audio else np.zeros(0, np.float32)
        lat = self._np(torch.cat(lat_rows)) if lat_rows else np.zeros((0, 0), np.float32)
        sem = self._np(torch.cat(sem_rows)) if sem_rows else np.zeros((0, 0), np.float32)
        return StreamChunk(audio=wave.astype(np.float32), latents=lat, semantic=sem,
                           state=self._state(acoustic_cache, semantic_cache), tokens_end=step, final=final,
                           why=why, token_ids=np.asarray(chunk_ids, dtype=np.int32))

    def _allowed(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        mask = torch.full_like(logits, float("-inf"))
        mask[:, [cfg.audio_bos_token_id, cfg.audio_eos_token_id, cfg.audio_token_id, cfg.eos_token_id]] = 0
        return logits + mask
