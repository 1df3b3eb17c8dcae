// REST calls with the browser session (docs/protocol.md §2 "Browser sessions"):
// the session cookie authenticates, writes carry X-CSRFToken, and the long-poll
// carries X-Natter-Session. Errors come back as ApiError with the server's `code`.

export class ApiError extends Error {
  constructor(status, code, message, data = {}) {
    super(message || code);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.data = data || {};
  }
}

/** The request never got an answer (offline, server down, aborted). */
export class NetworkError extends Error {
  constructor(message = "network error") {
    super(message);
    this.name = "NetworkError";
  }
}

/** Read fresh every time: Django rotates the CSRF token at login. */
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function errorFrom(res) {
  let body = null;
  try {
    body = await res.json();
  } catch (e) {
    // not JSON (a proxy's error page): keep the status
  }
  const err = body && body.error ? body.error : {};
  return new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, err);
}

export async function api(method, path, body = undefined, { signal, headers = {} } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...headers },
    signal,
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = csrfToken();
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new NetworkError(e.message);
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);

/** Path segments are ids the server made; encode anyway. */
export const seg = (s) => encodeURIComponent(s);

// Bigger blobs go up in parts (docs/protocol.md §7c): daphne holds a request body in memory.
export const UPLOAD_IN_ONE_REQUEST_MAX = 4 * 1024 * 1024;

/** One XHR with upload progress (fetch has none). Resolves to the JSON answer. */
function xhrSend(method, url, body, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.withCredentials = true;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded);
    };
    xhr.onload = () => {
      let answer = null;
      try {
        answer = JSON.parse(xhr.responseText);
      } catch (e) {
        // not JSON: keep the status
      }
      if (xhr.status >= 200 && xhr.status < 300 && answer) resolve(answer);
      else {
        const err = (answer && answer.error) || {};
        reject(
          new ApiError(xhr.status, err.code || `http_${xhr.status}`, err.message || xhr.statusText, err),
        );
      }
    };
    xhr.onerror = () => reject(new NetworkError("upload failed"));
    xhr.send(body);
  });
}

/**
 * Upload an encrypted blob, reporting progress 0..1. Small blobs in one request;
 * large ones resumable in parts, continuing at the server's offset (`resume`
 * {mediaId} comes from `onOpened` of an earlier try). Resolves to the answer
 * {media_id, size, sha256, complete, …}.
 */
export async function uploadMedia(
  conversation,
  blob,
  { onProgress = () => {}, resume = null, onOpened = () => {} } = {},
) {
  const q = `conversation=${encodeURIComponent(conversation)}`;
  // A small file is one round trip; a larger one goes up in parts that can resume.
  if (blob.size <= UPLOAD_IN_ONE_REQUEST_MAX && !resume) {
    const answer = await xhrSend("POST", `/api/v1/media?${q}`, blob, (n) => onProgress(n / blob.size));
    onProgress(1);
    return answer;
  }
  let mediaId = resume && resume.mediaId;
  let partMax = (resume && resume.partMax) || UPLOAD_IN_ONE_REQUEST_MAX;
  let offset = 0;
  if (!mediaId) {
    const opened = await post(`/api/v1/media/uploads?${q}`, { size: blob.size });
    mediaId = opened.media_id;
    partMax = Number(opened.part_max_bytes) || partMax;
    await onOpened({ mediaId, partMax });
  }
  let answer = null;
  for (;;) {
    const part = blob.slice(offset, Math.min(blob.size, offset + partMax));
    try {
      answer = await xhrSend("PATCH", `/api/v1/media/${seg(mediaId)}?offset=${offset}`, part, (n) =>
        onProgress((offset + n) / blob.size),
      );
    } catch (err) {
      // The server has more than we thought (an answer was lost, or a retry): go on from there.
      if (err instanceof ApiError && err.code === "offset_mismatch") {
        offset = Number(err.data.offset);
        // All of it arrived but the last answer was lost: complete, its sha256 unseen.
        if (offset >= blob.size) return { media_id: mediaId, size: blob.size, complete: true, sha256: null };
        continue;
      }
      throw err;
    }
    offset = Number(answer.offset);
    onProgress(offset / blob.size);
    if (answer.complete || offset >= blob.size) break;
  }
  if (!answer || !answer.complete) throw new NetworkError("the upload did not complete");
  return answer;
}

/** Download a blob: ArrayBuffer, or ApiError (410 media_expired, 404 …). */
export async function downloadMedia(mediaId, onProgress = () => {}) {
  let res;
  try {
    res = await fetch(`/api/v1/media/${seg(mediaId)}`, { credentials: "same-origin" });
  } catch (e) {
    throw new NetworkError(e.message);
  }
  if (!res.ok) throw await errorFrom(res);
  const total = Number(res.headers.get("Content-Length")) || 0;
  if (!res.body || !total) return res.arrayBuffer();
  const reader = res.body.getReader();
  const out = new Uint8Array(total);
  let off = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (off + value.length > total) throw new ApiError(502, "bad_length", "more bytes than announced");
    out.set(value, off);
    off += value.length;
    onProgress(off / total);
  }
  return out.buffer.slice(0, off);
}
