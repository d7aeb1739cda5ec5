// A tiny STOMP 1.2 frame encoder and parser, enough for a load generator.
//
// Not a general client: no header unescaping beyond what the benchmark reads, no
// transactions. It is written for speed on the receive path: a MESSAGE frame is located
// with Buffer.indexOf (native) and its body is handed over as offsets into the received
// buffer, with no string built for it.

const NL = 0x0a;
const CR = 0x0d;
const NUL = 0x00;
const HEADER_END = Buffer.from("\n\n");
const CRLF_END = Buffer.from("\r\n\r\n");
const CONTENT_LENGTH = Buffer.from("\ncontent-length:");

function escapeHeader(value) {
  return String(value)
    .replace(/\\/g, "\\\\")
    .replace(/\n/g, "\\n")
    .replace(/\r/g, "\\r")
    .replace(/:/g, "\\c");
}

/** Encode one frame as a string (WebSocket text message). CONNECT headers are not
 *  escaped, as the specification says. */
export function encode(command, headers = {}, body = "") {
  const esc = command === "CONNECT" || command === "STOMP" ? (v) => String(v) : escapeHeader;
  let out = command + "\n";
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || v === null) continue;
    out += k + ":" + esc(v) + "\n";
  }
  return out + "\n" + body + "\0";
}

/** A SEND frame as a prefix and suffix around the body, so a publisher builds each frame
 *  with one string concatenation. */
export function sendTemplate(destination, extraHeaders = {}) {
  let head = "SEND\ndestination:" + escapeHeader(destination) + "\n";
  for (const [k, v] of Object.entries(extraHeaders)) {
    if (v === undefined || v === null) continue;
    head += k + ":" + escapeHeader(v) + "\n";
  }
  return { head: head + "content-type:application/json\n\n", tail: "\0" };
}

function unescapeHeader(value) {
  if (value.indexOf("\\") < 0) return value;
  return value.replace(/\\([\\nrc])/g, (_, c) =>
    c === "n" ? "\n" : c === "r" ? "\r" : c === "c" ? ":" : "\\",
  );
}

/** Headers of a frame whose header block is buf[start:end) (end excludes the blank line). */
export function parseHeaders(buf, start, end) {
  const text = buf.toString("utf8", start, end);
  const lines = text.split("\n");
  const headers = {};
  for (let i = 1; i < lines.length; i++) {
    let line = lines[i];
    if (line.endsWith("\r")) line = line.slice(0, -1);
    const c = line.indexOf(":");
    if (c < 0) continue;
    const k = line.slice(0, c);
    if (!(k in headers)) headers[k] = unescapeHeader(line.slice(c + 1));
  }
  let command = lines[0];
  if (command.endsWith("\r")) command = command.slice(0, -1);
  return { command, headers };
}

/** A STOMP stream parser. `onFrame(buf, cmdStart, cmdEnd, headerEnd, bodyStart, bodyEnd)`
 *  gets offsets into `buf` (headerEnd: where the blank line starts); call
 *  parseHeaders(buf, cmdStart, headerEnd) when the headers
 *  matter. `onHeartBeat()` gets end-of-line beats. Frames may span or share chunks. */
export class StompParser {
  constructor(onFrame, onHeartBeat = () => {}) {
    this.onFrame = onFrame;
    this.onHeartBeat = onHeartBeat;
    this.pending = null;
  }

  feed(chunk) {
    let buf = chunk;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    const n = buf.length;
    let i = 0;
    while (i < n) {
      const b = buf[i];
      if (b === NL) {
        this.onHeartBeat();
        i++;
        continue;
      }
      if (b === CR && i + 1 < n && buf[i + 1] === NL) {
        this.onHeartBeat();
        i += 2;
        continue;
      }
      const cmdEnd = buf.indexOf(NL, i);
      if (cmdEnd < 0) break;
      // The header block ends at the first blank line: LF LF, or CRLF CRLF when the
      // command line ends in CRLF.
      const crlf = cmdEnd > i && buf[cmdEnd - 1] === CR;
      const headerEnd = crlf ? buf.indexOf(CRLF_END, cmdEnd - 1) : buf.indexOf(HEADER_END, cmdEnd);
      if (headerEnd < 0) break;
      const bodyStart = headerEnd + (crlf ? 4 : 2);
      let bodyEnd;
      const cl = buf.subarray(cmdEnd, headerEnd + 1).indexOf(CONTENT_LENGTH);
      if (cl >= 0) {
        const vs = cmdEnd + cl + CONTENT_LENGTH.length;
        const ve = buf.indexOf(NL, vs);
        const len = parseInt(buf.toString("latin1", vs, ve).trim(), 10);
        bodyEnd = bodyStart + len;
        if (bodyEnd >= n) break; // need the body and its NUL
        if (buf[bodyEnd] !== NUL) throw new Error("STOMP frame body is not NUL-terminated");
      } else {
        bodyEnd = buf.indexOf(NUL, bodyStart);
        if (bodyEnd < 0) break;
      }
      this.onFrame(buf, i, cmdEnd, headerEnd, bodyStart, bodyEnd);
      i = bodyEnd + 1;
    }
    if (i < n) this.pending = i === 0 ? buf : buf.subarray(i);
  }
}

/** The command of a frame at buf[start:cmdEnd), as a string, CR stripped. */
export function commandOf(buf, start, cmdEnd) {
  let end = cmdEnd;
  if (end > start && buf[end - 1] === CR) end--;
  return buf.toString("latin1", start, end);
}
