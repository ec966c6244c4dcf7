// The audio thread's half of "listen while it is generated" (app.js, Listener): the decoded chunks
// arrive in order as Float32Arrays and are played as one stream, sample after sample, with nothing
// between them. When it runs dry (generation slower than playback, or a failover), it goes silent,
// counts the silence, and starts again once `prebuffer` samples wait (or the job has ended), so the
// stream resumes where it stopped: nothing is skipped and nothing is played twice.
// With record on, it keeps what it played (the page's test compares it with the final file).
"use strict";

class ChunkStream extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.queue = [];          // Float32Arrays not yet (fully) played
    this.offset = 0;          // samples of queue[0] already played
    this.queued = 0;          // samples waiting
    this.prebuffer = options.processorOptions.prebuffer;
    this.waiting = true;      // buffering: before the start and after running dry
    this.ended = false;       // no more chunks will come
    this.played = 0;          // samples played
    this.silences = [];       // [at sample, seconds] of each time it ran dry mid-stream
    this.dryFrom = null;      // currentTime when it last ran dry
    this.heard = null;        // what it played, when recording
    this.port.onmessage = (event) => this.message(event.data);
  }

  message(m) {
    if (m.samples) { this.queue.push(m.samples); this.queued += m.samples.length; }
    if (m.end) this.ended = true;
    if (m.record) this.heard = [];
    if (m.report) {
      this.port.postMessage({ report: true, played: this.played, queued: this.queued, waiting: this.waiting,
                              silences: this.silences, heard: this.heard });
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (this.waiting && (this.queued >= this.prebuffer || (this.ended && this.queued > 0))) {
      this.waiting = false;
      if (this.dryFrom !== null) { this.silences.push([this.played, currentTime - this.dryFrom]); this.dryFrom = null; }
    }
    let i = 0;
    if (!this.waiting) {
      while (i < out.length && this.queue.length) {
        const head = this.queue[0];
        const n = Math.min(out.length - i, head.length - this.offset);
        out.set(head.subarray(this.offset, this.offset + n), i);
        i += n; this.offset += n; this.queued -= n;
        if (this.offset === head.length) { this.queue.shift(); this.offset = 0; }
      }
      if (i > 0 && this.heard) this.heard.push(out.slice(0, i));
      this.played += i;
      if (i < out.length && !this.ended) { this.waiting = true; this.dryFrom = currentTime; }
    }
    out.fill(0, i);
    return true;
  }
}

registerProcessor("chunk-stream", ChunkStream);
