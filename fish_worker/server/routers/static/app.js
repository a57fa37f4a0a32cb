// Fish Speech playground: streams POST /run (NDJSON) into Web Audio as the audio is generated; the
// microphone button records a voice message and sends it as the job's `audio` (transcribed by the server).
// Plain browser JavaScript, no build step; every call is the public API with the key typed in.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "fish-playground-key";
const START_LEAD_S = 0.05; // scheduling margin so the first buffer never starts in the past
const MEDIA_TYPES = { wav: "audio/wav", pcm16: "audio/wav", mp3: "audio/mpeg", opus: "audio/ogg", flac: "audio/flac" };
const EXTENSIONS = { wav: "wav", pcm16: "wav", mp3: "mp3", opus: "ogg", flac: "flac" };

let audioContext = null;
let run = null; // the request in progress: { abort, sources, ... }
let clip = null; // a chosen reference clip: { wavBase64 }

// ---- small helpers ---------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

// A mono 16-bit WAV file of `samples` (Int16Array).
function wavFile(samples, rate) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + samples.byteLength, true); text(8, "WAVE");
  text(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, rate, true); header.setUint32(28, rate * 2, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, samples.byteLength, true);
  return new Blob([header.buffer, samples.buffer], { type: "audio/wav" });
}

async function errorText(response) {
  try {
    const body = await response.json();
    const error = body.error;
    if (typeof error === "string") return error;
    if (error && error.message) return error.message;
    if (body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setState(state) {
  $("output").dataset.state = state;
  $("state").textContent = state;
  const busy = state === "requesting" || state === "streaming";
  $("play").disabled = busy;
  $("stop").disabled = !busy;
}

// ---- voices (Fish Audio's /model API over the saved-voices store) --------------------------------

async function loadVoices(selectId) {
  const select = $("voice");
  const keep = selectId ?? select.value;
  try {
    const response = await fetch("/model?page_size=100", { headers: authHeaders() });
    if (!response.ok) {
      if (response.status !== 401 || $("api-key").value) showError(`voices: ${await errorText(response)}`);
      return;
    }
    const { items } = await response.json();
    select.replaceChildren(new Option("Default voice", ""));
    if (clip) select.add(new Option("This clip (not saved)", "clip"));
    for (const voice of items) select.add(new Option(voice.title, voice._id));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  } catch (exc) {
    showError(`voices: ${exc.message}`);
  }
}

// The clip as base64 WAV (what the job's reference_audio takes); other formats are decoded here.
async function clipAsWav(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (String.fromCharCode(...bytes.subarray(0, 4)) === "RIFF") return bytesToBase64(bytes);
  const decoded = await new OfflineAudioContext(1, 1, 44100).decodeAudioData(bytes.buffer);
  const mono = new Int16Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const channel = decoded.getChannelData(c);
    for (let i = 0; i < channel.length; i++) {
      mono[i] += Math.max(-32768, Math.min(32767, Math.round((channel[i] / decoded.numberOfChannels) * 32767)));
    }
  }
  return bytesToBase64(new Uint8Array(await wavFile(mono, decoded.sampleRate).arrayBuffer()));
}

async function chooseClip() {
  const file = $("clip").files[0];
  showError("");
  if (!file) { clip = null; await loadVoices(""); return; }
  try {
    clip = { wavBase64: await clipAsWav(file) };
    if (!$("clip-title").value) $("clip-title").value = file.name.replace(/\.[^.]+$/, "");
    await loadVoices("clip");
  } catch (exc) {
    clip = null;
    showError(`clip: cannot read ${file.name} (${exc.message})`);
  }
}

async function saveVoice() {
  const file = $("clip").files[0];
  if (!file) { showError("Choose a reference clip first."); return; }
  const form = new FormData();
  form.append("title", $("clip-title").value.trim() || file.name);
  form.append("voices", file, file.name);
  form.append("texts", $("clip-text").value);
  showError("");
  $("save-voice").disabled = true;
  try {
    const response = await fetch("/model", { method: "POST", headers: authHeaders(), body: form });
    if (!response.ok) { showError(`save voice: ${await errorText(response)}`); return; }
    const voice = await response.json();
    await loadVoices(voice._id);
  } finally {
    $("save-voice").disabled = false;
  }
}

// ---- playback ------------------------------------------------------------------------------

class Player {
  // Schedules pcm pieces back to back on one AudioContext and tracks which sentence is playing.
  constructor(context) {
    this.context = context;
    this.next = 0;
    this.sources = [];
    this.sentences = []; // { element, start }
    this.timer = setInterval(() => this.highlight(), 50);
  }

  play(floats, rate) {
    if (!floats.length) return;
    const buffer = this.context.createBuffer(1, floats.length, rate);
    buffer.copyToChannel(floats, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.next = Math.max(this.next, this.context.currentTime + START_LEAD_S);
    source.start(this.next);
    this.next += buffer.duration;
    this.sources.push(source);
  }

  sentence(element) {
    // Its audio starts where the next scheduled piece will.
    this.sentences.push({ element, start: Math.max(this.next, this.context.currentTime + START_LEAD_S) });
  }

  highlight() {
    const now = this.context.currentTime;
    for (const [i, s] of this.sentences.entries()) {
      const end = i + 1 < this.sentences.length ? this.sentences[i + 1].start : this.next;
      s.element.classList.toggle("speaking", now >= s.start && now < end);
      s.element.classList.toggle("spoken", now >= end);
    }
    if (this.finished && now >= this.next) this.stopHighlighting();
  }

  stopHighlighting() {
    clearInterval(this.timer);
    for (const s of this.sentences) { s.element.classList.remove("speaking"); }
  }

  stop() {
    for (const source of this.sources) { try { source.stop(); } catch (_) { /* not started */ } }
    this.stopHighlighting();
  }
}

class Stream {
  // One request's chunks: decode, play, count, and keep the file for the audio element.
  constructor(format, player, started) {
    this.format = format;
    this.player = player;
    this.started = started;
    this.parts = []; // the file's bytes (compressed formats) or its samples (pcm/wav)
    this.samples = 0;
    this.chunks = 0;
    this.rate = 0;
    this.headerLeft = format === "wav" ? 44 : 0; // the streamed WAV's header comes once
    this.carry = null; // an odd byte left between chunks (a split never lands mid-sample by design, but be safe)
  }

  feed(output) {
    if (output.transcript !== undefined) { // a voice message's transcript: the job's first chunk
      showTranscript(output.transcript);
      return;
    }
    if (output.text_delta !== undefined) {
      $("reply-box").hidden = false;
      $("reply").textContent += output.text_delta;
      return;
    }
    if (output.audio === undefined) return;
    this.chunks += 1;
    this.rate = output.sample_rate;
    if (output.text) {
      const li = document.createElement("li");
      li.textContent = output.text;
      $("sentences").append(li);
      this.player.sentence(li);
    }
    let bytes = base64ToBytes(output.audio);
    if (bytes.length && $("output").dataset.firstAudioMs === "") {
      const ms = Math.round(performance.now() - this.started);
      $("output").dataset.firstAudioMs = String(ms);
      $("first-audio").textContent = `${ms} ms`;
    }
    if (this.format === "pcm16" || this.format === "wav") {
      if (this.headerLeft) {
        const skip = Math.min(this.headerLeft, bytes.length);
        bytes = bytes.subarray(skip);
        this.headerLeft -= skip;
      }
      if (this.carry !== null) { bytes = Uint8Array.from([this.carry, ...bytes]); this.carry = null; }
      if (bytes.length % 2) { this.carry = bytes[bytes.length - 1]; bytes = bytes.subarray(0, bytes.length - 1); }
      const ints = new Int16Array(bytes.slice().buffer);
      this.parts.push(ints);
      this.count(ints.length);
      this.player.play(Float32Array.from(ints, (v) => v / 32768), this.rate);
    } else {
      this.parts.push(bytes);
    }
    $("output").dataset.chunks = String(this.chunks);
  }

  count(samples) {
    this.samples += samples;
    $("output").dataset.samples = String(this.samples);
    $("samples").textContent = this.samples.toLocaleString("en");
    $("audio-seconds").textContent = `${(this.samples / this.rate).toFixed(2)} s`;
  }

  // The whole file, for the audio element and the download link; compressed formats play now.
  async finish() {
    let file;
    if (this.format === "pcm16" || this.format === "wav") {
      const all = new Int16Array(this.parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const part of this.parts) { all.set(part, at); at += part.length; }
      file = wavFile(all, this.rate || 44100);
    } else {
      file = new Blob(this.parts, { type: MEDIA_TYPES[this.format] });
      if (file.size) {
        const decoded = await this.player.context.decodeAudioData(await file.arrayBuffer());
        this.rate = decoded.sampleRate;
        this.count(decoded.length);
        this.player.play(decoded.getChannelData(0), decoded.sampleRate);
      }
    }
    this.player.finished = true;
    const url = URL.createObjectURL(file);
    $("result-audio").src = url;
    $("download").href = url;
    $("download").download = `speech.${EXTENSIONS[this.format]}`;
    $("result").hidden = false;
  }
}

// `voiceMessage`: base64 of a recording, sent as the job's `audio` instead of the text.
function jobInput(voiceMessage) {
  const format = $("format").value;
  const input = {
    ...(voiceMessage ? { audio: voiceMessage } : { message: $("text").value }),
    mode: document.querySelector("input[name=mode]:checked").value,
    stream: true,
    audio_format: format,
    speed: Number($("speed").value),
    volume: Number($("volume").value),
  };
  if ($("temperature").value !== "") input.temperature = Number($("temperature").value); // 0: near-greedy
  if ($("seed").value !== "") input.seed = Number($("seed").value);
  if ($("max-tokens").value !== "") input.max_tokens = Number($("max-tokens").value);
  const rate = Number($("sample-rate").value);
  if (rate !== 44100 && format !== "opus") input.sample_rate = rate; // opus is always 48 kHz
  const voice = $("voice").value;
  if (voice === "clip" && clip) {
    input.reference_audio = clip.wavBase64;
    if ($("clip-text").value.trim()) input.reference_text = $("clip-text").value.trim();
  } else if (voice) {
    input.voice_id = voice;
  }
  return input;
}

async function play(voiceMessage) {
  stop();
  showError("");
  $("sentences").replaceChildren();
  $("reply").textContent = "";
  $("reply-box").hidden = true;
  showTranscript(null);
  $("result").hidden = true;
  for (const [id, text] of [["first-audio", "–"], ["audio-seconds", "–"], ["samples", "0"]]) $(id).textContent = text;
  Object.assign($("output").dataset, { samples: "0", chunks: "0", firstAudioMs: "", totalMs: "" });

  audioContext = audioContext || new AudioContext();
  await audioContext.resume(); // inside the click: browsers allow sound after a user gesture
  const input = jobInput(voiceMessage);
  const abort = new AbortController();
  const player = new Player(audioContext);
  const stream = new Stream(input.audio_format, player, performance.now());
  run = { abort, player };
  setState("requesting");
  try {
    const response = await fetch("/run", {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify({ input }),
      signal: abort.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    setState("streaming");
    // NDJSON: one JSON object per line; a network read may end mid-line.
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) handleLine(line, stream);
    }
    if (pending.trim()) handleLine(pending, stream);
    await stream.finish();
    $("output").dataset.totalMs = String(Math.round(performance.now() - stream.started));
    setState("done");
  } catch (exc) {
    if (exc.name === "AbortError") { setState("stopped"); return; }
    player.stop();
    showError(exc.message);
    setState("error");
  }
}

function handleLine(line, stream) {
  if (!line.trim()) return;
  const message = JSON.parse(line);
  if (message.status === "error") throw new Error(message.error);
  stream.feed(message.output);
}

function stop() {
  if (!run) return;
  run.abort.abort(); // closing the request stops the generation on the server
  run.player.stop();
  run = null;
}

function showTranscript(text) {
  $("transcript").textContent = text ?? "";
  $("transcript-box").hidden = text === null;
}

// ---- the microphone: a recorded voice message becomes the job's `audio` ------------------------------

let recorder = null; // the MediaRecorder while recording

async function toggleRecording() {
  if (recorder) { recorder.stop(); return; } // its "stop" event sends the recording
  showError("");
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (exc) {
    showError(`microphone: ${exc.message}`);
    return;
  }
  // The browser's own container and codec (WebM/Opus in Chromium and Firefox, MP4/AAC in Safari):
  // the server decodes any of them.
  const parts = [];
  recorder = new MediaRecorder(media);
  recorder.addEventListener("dataavailable", (event) => { if (event.data.size) parts.push(event.data); });
  recorder.addEventListener("stop", async () => {
    media.getTracks().forEach((track) => track.stop());
    const recording = new Blob(parts, { type: recorder.mimeType });
    recorder = null;
    setRecording(false);
    if (!recording.size) { showError("microphone: nothing was recorded"); return; }
    await play(bytesToBase64(new Uint8Array(await recording.arrayBuffer())));
  });
  recorder.start();
  setRecording(true);
}

function setRecording(recording) {
  $("record").dataset.recording = String(recording);
  $("record").textContent = recording ? "■ Stop recording" : "🎤 Record";
  $("play").disabled = recording;
}

// ---- wiring --------------------------------------------------------------------------------

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    showError("");
    loadVoices();
  });
  $("speed").addEventListener("input", () => { $("speed-value").textContent = `${Number($("speed").value).toFixed(2)}×`; });
  $("volume").addEventListener("input", () => { $("volume-value").textContent = `${$("volume").value} dB`; });
  $("refresh-voices").addEventListener("click", () => loadVoices());
  $("clip").addEventListener("change", chooseClip);
  $("save-voice").addEventListener("click", saveVoice);
  $("play").addEventListener("click", () => play());
  $("record").addEventListener("click", toggleRecording);
  $("stop").addEventListener("click", () => { stop(); setState("stopped"); });
  if ($("api-key").value) loadVoices();
}

init();
