// The vision-attn web page: send the image to /v1/vqa or /v1/caption with return_attention, show the text as
// word chips, and draw a word's attention map (an h x w grid over the whole image, which the model sees
// resized to a square) on a canvas over the image, upsampled bilinearly, as vision_attn/visualize.py does.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ALPHA = 0.8; // opacity of the highest attention; no attention is transparent
const MAX_CANVAS = 1024; // canvas pixels on the longer side, at most

const state = {
  file: null, // the chosen File
  attention: null, // the last answer's "attention" object
  pinned: null, // what a click keeps shown: a word index or "rollout"
  shown: null, // what is drawn now: the pinned map or the one pointed at
};

// matplotlib's "jet", piecewise linear: t in [0, 1] -> [r, g, b] in 0..255
function jet(t) {
  const channel = (centre) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - centre))));
  return [channel(3), channel(2), channel(1)];
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

function setBusy(button, busy) {
  for (const b of [$("ask"), $("caption")]) b.disabled = busy;
  document.body.classList.toggle("busy", busy);
  if (busy) {
    button.dataset.label = button.textContent;
    button.textContent = "Working…";
  } else if (button.dataset.label) {
    button.textContent = button.dataset.label;
  }
}

// --- choosing an image ---

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  state.attention = null;
  state.pinned = null;
  $("result").hidden = true;
  $("legend").hidden = true;
  hideError();
  $("filename").textContent = `${file.name} (${Math.max(1, Math.round(file.size / 1024))} KB)`;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
}

$("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));

$("preview").addEventListener("load", () => {
  $("placeholder").hidden = true;
  $("stage").hidden = false;
  draw();
});

$("preview").addEventListener("error", () => {
  // not an image the browser can show: keep the file, the server will say what is wrong with it
  $("stage").hidden = true;
  $("placeholder").hidden = false;
  $("placeholder").querySelector("strong").textContent = "No preview for this file";
});

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});

// --- asking ---

async function send(route, fields, button) {
  if (!state.file) {
    showError("Choose or drop an image first.");
    return null;
  }
  const file = state.file;
  const body = new FormData();
  body.append("image", file, file.name);
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  body.append("return_attention", "true");
  hideError();
  setBusy(button, true);
  try {
    const resp = await fetch(route, { method: "POST", body });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      const why = data && data.error ? data.error : resp.statusText;
      showError(`The server answered ${resp.status}: ${why}`);
      return null;
    }
    return file === state.file ? data : null; // another image was chosen meanwhile: this answer is not about it
  } catch (err) {
    showError(`Could not reach the server (${err.message}).`);
    return null;
  } finally {
    setBusy(button, false);
  }
}

$("ask-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (!question) {
    showError("Type a question first.");
    return;
  }
  const data = await send("/v1/vqa", { question, top_k: "3" }, $("ask"));
  if (data) showResult("Answer", `Q: ${question}`, data);
});

$("caption").addEventListener("click", async () => {
  const data = await send("/v1/caption", {}, $("caption"));
  if (data) showResult("Caption", "", data);
});

// --- the answer ---

function showResult(kind, prompt, data) {
  state.attention = data.attention;
  state.pinned = null;
  $("result").hidden = false;
  $("result").dataset.kind = kind.toLowerCase();
  $("result-kind").textContent = kind;
  $("result-prompt").textContent = prompt;
  $("result-prompt").hidden = !prompt;

  const words = $("words");
  words.replaceChildren();
  data.attention.words.forEach((w, i) => words.append(chip(w.word, i)));
  if (!data.attention.words.length) words.textContent = "(no words)";

  const ranked = $("ranked");
  ranked.replaceChildren();
  for (const a of data.answers || []) {
    const li = document.createElement("li");
    const pct = (100 * a.probability).toFixed(1);
    li.innerHTML = '<span class="text"></span><span class="bar"><span></span></span><span class="pct"></span>';
    li.querySelector(".text").textContent = a.answer || "(empty)";
    li.querySelector(".bar span").style.width = `${pct}%`;
    li.querySelector(".pct").textContent = `${pct}%`;
    ranked.append(li);
  }
  ranked.hidden = !ranked.children.length;
  $("latency").textContent = `${data.latency_ms} ms to answer`;
  draw();
}

function chip(text, key) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "chip";
  b.textContent = text;
  wire(b, key);
  return b;
}

// A chip shows its map while pointed at (or focused); a click pins it, so it stays when the pointer leaves.
function wire(button, key) {
  button.dataset.key = key;
  for (const type of ["mouseenter", "focus"]) button.addEventListener(type, () => draw(key));
  for (const type of ["mouseleave", "blur"]) button.addEventListener(type, () => draw());
  button.addEventListener("click", () => {
    state.pinned = state.pinned === key ? null : key;
    draw(key); // still under the pointer, pinned or not
  });
}

wire($("rollout"), "rollout");

// --- the heatmap ---

// Draw the map of `key` (a word index or "rollout"; default: the pinned one, if any) over the image.
function draw(key = state.pinned) {
  state.shown = key;
  const canvas = $("overlay");
  const img = $("preview");
  const scale = Math.min(window.devicePixelRatio || 1, MAX_CANVAS / Math.max(img.clientWidth, img.clientHeight, 1));
  canvas.width = Math.max(1, Math.round(img.clientWidth * scale));
  canvas.height = Math.max(1, Math.round(img.clientHeight * scale));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const c of document.querySelectorAll(".chip")) {
    c.classList.toggle("active", c.dataset.key === String(key));
    c.classList.toggle("pinned", c.dataset.key === String(state.pinned));
  }
  const att = state.attention;
  const map = att === null || key === null ? null : key === "rollout" ? att.rollout : att.words[key].map;
  canvas.dataset.shows = map === null ? "" : key === "rollout" ? "rollout" : att.words[key].word;
  if (map === null) {
    $("legend").hidden = true;
    return;
  }
  // words share one scale (0 to the highest weight of any word) so they compare; the rollout has its own
  const peak = (maps) => Math.max(1e-12, ...maps.flat(Infinity));
  const vmax = key === "rollout" ? peak(att.rollout) : peak(att.words.map((w) => w.map));
  ctx.putImageData(heatmap(ctx, map, vmax, canvas.width, canvas.height), 0, 0);
  legend(key === "rollout" ? "encoder rollout, its own scale" : `“${att.words[key].word}”, one scale for all words`, vmax);
}

// map [h][w] -> RGBA pixels [height][width], bilinear with align_corners=False (as torch's interpolate)
function heatmap(ctx, map, vmax, width, height) {
  const h = map.length;
  const w = map[0].length;
  const axis = (n, size) =>
    Array.from({ length: n }, (_, i) => {
      const s = Math.min(size - 1, Math.max(0, ((i + 0.5) * size) / n - 0.5));
      const i0 = Math.floor(s);
      return [i0, Math.min(i0 + 1, size - 1), s - i0];
    });
  const xs = axis(width, w);
  const ys = axis(height, h);
  const out = ctx.createImageData(width, height);
  let p = 0;
  for (const [y0, y1, fy] of ys) {
    const r0 = map[y0];
    const r1 = map[y1];
    for (const [x0, x1, fx] of xs) {
      const top = r0[x0] + (r0[x1] - r0[x0]) * fx;
      const bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
      const t = Math.min(1, Math.max(0, (top + (bottom - top) * fy) / vmax));
      const [r, g, b] = jet(t);
      out.data[p] = r;
      out.data[p + 1] = g;
      out.data[p + 2] = b;
      out.data[p + 3] = Math.round(255 * MAX_ALPHA * t);
      p += 4;
    }
  }
  return out;
}

function legend(title, vmax) {
  $("legend").hidden = false;
  $("legend-title").textContent = title;
  $("legend-max").textContent = `${(100 * vmax).toFixed(1)}% of the attention on one patch`;
}

$("legend-bar").style.background = `linear-gradient(to right, ${Array.from({ length: 11 }, (_, i) => {
  const [r, g, b] = jet(i / 10);
  return `rgba(${r}, ${g}, ${b}, ${Math.max(0.05, (MAX_ALPHA * i) / 10)}) ${i * 10}%`;
}).join(", ")})`;

window.addEventListener("resize", () => draw(state.shown)); // the canvas follows the image's new size
