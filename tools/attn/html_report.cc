#include "html_report.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <new>
#include <nlohmann/json.hpp>
#include <string_view>

#include "attn/error.h"
#include "attn/io/file.h"

namespace attn::cli {
namespace {

// base64 of the raw float32 bytes: exact weights, compact, decoded in the page
std::string base64(const float* data, size_t n) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* b = reinterpret_cast<const unsigned char*>(data);
  const size_t len = n * 4;
  std::string out;
  out.reserve((len + 2) / 3 * 4);
  for (size_t i = 0; i < len; i += 3) {
    const uint32_t v =
        (uint32_t{b[i]} << 16) | (i + 1 < len ? uint32_t{b[i + 1]} << 8 : 0) | (i + 2 < len ? b[i + 2] : 0);
    out += k[(v >> 18) & 63];
    out += k[(v >> 12) & 63];
    out += i + 1 < len ? k[(v >> 6) & 63] : '=';
    out += i + 2 < len ? k[v & 63] : '=';
  }
  return out;
}

const char* kPage = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#1a1a2e;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
.layer{margin:10px 0 18px}.layer h3{font-size:14px;margin:4px 0;color:#444}
.maps{display:flex;flex-wrap:wrap;gap:14px}.map{background:#fff;border:1px solid #ddd;padding:6px;border-radius:4px}
.map .cap{font-size:12px;color:#555;text-align:center}canvas{display:block;cursor:crosshair}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;font-size:12px;padding:4px 7px;
  border-radius:3px;display:none;z-index:9}
.note{font-size:13px;color:#555;max-width:980px}.tokens{font-size:14px;margin:6px 0}
.tok{display:inline-block;padding:1px 5px;margin:1px;border:1px solid #bbb;border-radius:3px;cursor:pointer;
  background:#fff}
.tok.sel{background:#1f4e9e;color:#fff}
</style></head><body>
<h1>__TITLE__</h1><div id="intro"></div>
<div id="status" data-maps="0" data-drawn="0" data-errors="0"></div>
<div id="root"></div><div id="tip"></div>
<script>
"use strict";
const DATA = __DATA__;
const status = document.getElementById("status");
window.addEventListener("error", () => { status.dataset.errors = String(Number(status.dataset.errors) + 1); });
function decode(b64) {
  const s = atob(b64), u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
  return new Float32Array(u.buffer);
}
const tip = document.getElementById("tip");
const selected = {};  // sequence key -> selected query row
const drawers = [];
function color(w) {
  const t = Math.sqrt(Math.max(0, Math.min(1, w)));
  return [Math.round(255 - 224 * t), Math.round(255 - 177 * t), Math.round(255 - 97 * t)];
}
function makeMap(parent, m, head, data, caption) {
  const Lq = m.rows.length, Lk = m.cols.length;
  const labels = Math.max(Lq, Lk) <= 40;
  const pad = labels ? 76 : 8, size = Math.min(420, Math.max(120, 14 * Math.max(Lq, Lk)));
  const cw = size / Lk, ch = size / Lq;
  const box = document.createElement("div"); box.className = "map";
  const cv = document.createElement("canvas"); cv.width = size + pad; cv.height = size + pad;
  box.appendChild(cv); const cap = document.createElement("div"); cap.className = "cap"; cap.textContent = caption;
  box.appendChild(cap);
  parent.appendChild(box);
  const ctx = cv.getContext("2d");
  function draw() {
    ctx.clearRect(0, 0, cv.width, cv.height);
    // cells; when a cell is under a pixel, aggregate (max) into one pixel per block
    const img = ctx.createImageData(Math.ceil(size), Math.ceil(size));
    const W = img.width, Hh = img.height;
    for (let y = 0; y < Hh; y++) {
      const i0 = Math.floor(y / ch), i1 = Math.max(i0 + 1, Math.floor((y + 1) / ch));
      for (let x = 0; x < W; x++) {
        const j0 = Math.floor(x / cw), j1 = Math.max(j0 + 1, Math.floor((x + 1) / cw));
        let w = 0;
        for (let i = i0; i < Math.min(i1, Lq); i++)
          for (let j = j0; j < Math.min(j1, Lk); j++) w = Math.max(w, data[i * Lk + j]);
        const c = color(w), o = 4 * (y * W + x);
        img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, pad, pad);
    const sel = selected[m.rowKey];
    if (sel !== undefined && sel < Lq) {
      ctx.fillStyle = "rgba(250,250,250,0.55)";
      ctx.fillRect(pad, pad, size, sel * ch); ctx.fillRect(pad, pad + (sel + 1) * ch, size, size - (sel + 1) * ch);
      ctx.strokeStyle = "#e4572e"; ctx.lineWidth = 2; ctx.strokeRect(pad, pad + sel * ch, size, ch);
    }
    if (labels) {
      ctx.fillStyle = "#222"; ctx.font = Math.min(13, Math.max(9, ch - 2)) + "px sans-serif"; ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      m.rows.forEach((t, i) => ctx.fillText(t, pad - 4, pad + (i + 0.5) * ch));
      ctx.save(); ctx.textAlign = "left";
      m.cols.forEach((t, j) => {
        ctx.save(); ctx.translate(pad + (j + 0.5) * cw, pad - 4); ctx.rotate(-Math.PI / 4); ctx.fillText(t, 0, 0);
        ctx.restore();
      });
      ctx.restore();
    }
  }
  function cell(ev) {
    const r = cv.getBoundingClientRect(), x = ev.clientX - r.left - pad, y = ev.clientY - r.top - pad;
    if (x < 0 || y < 0 || x >= size || y >= size) return null;
    return [Math.floor(y / ch), Math.floor(x / cw)];
  }
  cv.addEventListener("mousemove", ev => {
    const c = cell(ev); if (!c) { tip.style.display = "none"; return; }
    const [i, j] = c;
    tip.textContent = "query " + i + " '" + m.rows[i] + "' \u2192 key " + j + " '" + m.cols[j] + "': " +
                      data[i * Lk + j].toFixed(4);
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; tip.style.display = "block";
  });
  cv.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  cv.addEventListener("click", ev => { const c = cell(ev); if (c) select(m.rowKey, c[0]); });
  drawers.push(draw); draw();
  status.dataset.drawn = String(Number(status.dataset.drawn) + 1);
}
function select(key, i) {
  selected[key] = selected[key] === i ? undefined : i;
  document.querySelectorAll(".tok").forEach(
      t => t.classList.toggle("sel", t.dataset.key === key && Number(t.dataset.i) === selected[key]));
  drawers.forEach(d => d());
}
DATA.intro.forEach(p => {
  const e = document.createElement("p"); e.className = "note"; e.textContent = p;
  document.getElementById("intro").appendChild(e);
});
const root = document.getElementById("root");
let total = 0, sectionEl = null, lastSection = null;
for (const m of DATA.maps) {
  m.rowKey = m.rows.join("\u0001");
  if (m.section !== lastSection) {
    lastSection = m.section; const h = document.createElement("h2"); h.textContent = m.section; root.appendChild(h);
    sectionEl = document.createElement("div"); root.appendChild(sectionEl);
  }
  const layer = document.createElement("div"); layer.className = "layer"; sectionEl.appendChild(layer);
  const h3 = document.createElement("h3"); h3.textContent = m.name; layer.appendChild(h3);
  if (m.note) {
    const n = document.createElement("div"); n.className = "note"; n.textContent = m.note; layer.appendChild(n);
  }
  const toks = document.createElement("div"); toks.className = "tokens"; toks.textContent = "queries: ";
  m.rows.forEach((t, i) => {
    const s = document.createElement("span"); s.className = "tok"; s.textContent = t; s.dataset.key = m.rowKey;
    s.dataset.i = i;
    s.title = "highlight what '" + t + "' attends to"; s.onclick = () => select(m.rowKey, i); toks.appendChild(s); });
  layer.appendChild(toks);
  const maps = document.createElement("div"); maps.className = "maps"; layer.appendChild(maps);
  const w = decode(m.weights), H = m.heads, n = m.rows.length * m.cols.length;
  const avg = new Float32Array(n);
  for (let h = 0; h < H; h++) {
    const d = w.subarray(h * n, (h + 1) * n);
    for (let k = 0; k < n; k++) avg[k] += d[k] / H;
  }
  const todo = [[avg, "average of " + H + " heads"]];
  for (let h = 0; h < H; h++) todo.push([w.subarray(h * n, (h + 1) * n), "head " + h]);
  total += todo.length; status.dataset.maps = String(total);
  for (const [d, c] of todo) makeMap(maps, m, 0, d, c);
}
status.textContent = "";
</script></body></html>
)HTML";

}  // namespace

namespace {

// JSON inside an inline <script>: no "<" at all (JSON puts it only inside strings, where \u003c is the same
// character): "</script>" would end the script, and "<!--<script" puts the parser where the template's own
// "</script>" no longer does (a model path holding it had left the page blank). U+2028 and U+2029, which JSON
// allows raw in strings, as escapes too: JavaScript before ES2019 ends a line at them.
void append_script_json(std::vector<uint8_t>& out, std::string_view json) {
  for (size_t i = 0; i < json.size(); ++i) {
    const auto c = static_cast<unsigned char>(json[i]);
    std::string_view escape;
    if (c == '<') escape = "\\u003c";
    if (c == 0xE2 && i + 2 < json.size() && static_cast<unsigned char>(json[i + 1]) == 0x80 &&
        (static_cast<unsigned char>(json[i + 2]) == 0xA8 || static_cast<unsigned char>(json[i + 2]) == 0xA9)) {
      escape = static_cast<unsigned char>(json[i + 2]) == 0xA8 ? "\\u2028" : "\\u2029";
      i += 2;
    }
    if (escape.empty())
      out.push_back(c);
    else
      out.insert(out.end(), escape.begin(), escape.end());
  }
}

}  // namespace

std::vector<uint8_t> html_report_bytes(const Report& report) {
  nlohmann::json maps = nlohmann::json::array();
  for (const AttentionMap& m : report.maps) {
    if (m.weights.rank() != 3 || m.weights.dim(1) != static_cast<int64_t>(m.rows.size()) ||
        m.weights.dim(2) != static_cast<int64_t>(m.cols.size()))
      throw ShapeError("attention map '" + m.name + "' has weights " + shape_str(m.weights.shape()) + " for " +
                       std::to_string(m.rows.size()) + " queries and " + std::to_string(m.cols.size()) + " keys");
    maps.push_back({{"section", m.section},
                    {"name", m.name},
                    {"rows", m.rows},
                    {"cols", m.cols},
                    {"note", m.note},
                    {"heads", m.weights.dim(0)},
                    {"weights", base64(m.weights.f32(), static_cast<size_t>(m.weights.numel()))}});
  }
  const nlohmann::json data = {{"intro", report.intro}, {"maps", maps}};
  // bytes that are not UTF-8 (a model path, say) become U+FFFD: nlohmann's dump had thrown an error naming no argument
  const std::string json = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string title;
  for (char c : report.title)
    title += c == '<'    ? "&lt;"
             : c == '>'  ? "&gt;"
             : c == '&'  ? "&amp;"
             : c == '"'  ? "&quot;"
             : c == '\'' ? "&#39;"
                         : std::string(1, c);
  // the template's placeholders, in one pass over the template: a title or data that holds "__TITLE__" or
  // "__DATA__" themselves is inserted as text (searching the page again had looped forever on such a title)
  const std::string_view tmpl = kPage;
  std::vector<uint8_t> out;
  out.reserve(tmpl.size() + title.size() + json.size() + json.size() / 16);
  auto append = [&out](std::string_view text) { out.insert(out.end(), text.begin(), text.end()); };
  for (size_t p = 0;;) {
    const size_t t = tmpl.find("__TITLE__", p), d = tmpl.find("__DATA__", p), at = std::min(t, d);
    append(tmpl.substr(p, at == std::string_view::npos ? std::string_view::npos : at - p));
    if (at == std::string_view::npos) break;
    if (at == t) {
      append(title);
    } else {
      append_script_json(out, json);
    }
    p = at + (at == t ? 9 : 8);
  }
  return out;
}

void write_html_report(const std::string& path, const Report& report) {
  io::write_file_atomically(path, html_report_bytes(report));
}

namespace {

// libpng's write callback: appends to the std::vector<png_byte> behind png_get_io_ptr. No C++ exception may cross
// libpng's C frames: memory that cannot be had is libpng's error (its longjmp), raised outside the catch.
void append_png_bytes(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<std::vector<png_byte>*>(png_get_io_ptr(png));
  bool failed = false;
  try {
    out->insert(out->end(), data, data + n);
  } catch (const std::bad_alloc&) {
    failed = true;
  }
  if (failed) png_error(png, "out of memory");
}

// libpng's flush callback: nothing to flush in memory (without one, libpng's default would fflush the vector as if it
// were a FILE*, were it ever called).
void flush_png_bytes(png_structp) {}

}  // namespace

std::vector<uint8_t> heatmap_png_bytes(const float* w, int64_t rows, int64_t cols, int cell) {
  if (rows <= 0 || cols <= 0 || cell <= 0) throw ArgumentError("PNG heatmap: empty map");
  const int64_t W = cols * cell, H = rows * cell;
  if (W > 16384 || H > 16384)
    throw ArgumentError("PNG heatmap: " + std::to_string(W) + "x" + std::to_string(H) +
                        " pixels is too large (16384 at most a side)");
  // Everything with a destructor lives before the setjmp: libpng's errors longjmp back to it, past any frame below.
  std::vector<png_byte> out, row(static_cast<size_t>(W * 3));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw Error("PNG heatmap: encoding failed");
  }
  png_set_write_fn(png, &out, append_png_bytes, flush_png_bytes);
  png_set_IHDR(png, info, static_cast<png_uint_32>(W), static_cast<png_uint_32>(H), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      const float v = w[(y / cell) * cols + x / cell];
      if (std::isnan(v)) {  // black, as the page draws it (a model whose training diverged)
        std::fill_n(row.begin() + 3 * x, 3, png_byte{0});
        continue;
      }
      const float t = std::sqrt(std::clamp(v, 0.0f, 1.0f));  // same scale as the page
      // rounded as the page's Math.round (a truncation had been a level darker)
      row[static_cast<size_t>(3 * x)] = static_cast<png_byte>(std::lround(255 - 224 * t));
      row[static_cast<size_t>(3 * x + 1)] = static_cast<png_byte>(std::lround(255 - 177 * t));
      row[static_cast<size_t>(3 * x + 2)] = static_cast<png_byte>(std::lround(255 - 97 * t));
    }
    png_write_row(png, row.data());
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return {out.begin(), out.end()};
}

}  // namespace attn::cli
