// Text that came from a guest (its console, a failure quoting its last lines) must not drive the
// operator's terminal: escape sequences could retitle it, rewrite what is on screen, or worse.

// C0 controls but tab and newline, DEL, and the C1 controls (U+0080..U+009F: CSI is U+009B).
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/** Control characters made visible (`\x1b`), except newline and tab; CRLF becomes a newline. */
export function printable(text: string): string {
  return text.replace(/\r\n/g, "\n").replace(CONTROL, (char) => `\\x${char.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** Decodes a byte stream (UTF-8 split across chunks is kept whole) into printable text. */
export class PrintableStream {
  private readonly decoder = new TextDecoder("utf-8");
  /** A chunk ending in CR may be the first half of CRLF. */
  private pendingCr = false;

  write(bytes: Uint8Array): string {
    let text = (this.pendingCr ? "\r" : "") + this.decoder.decode(bytes, { stream: true });
    this.pendingCr = text.endsWith("\r");
    if (this.pendingCr) text = text.slice(0, -1);
    return printable(text);
  }

  end(): string {
    const text = (this.pendingCr ? "\r" : "") + this.decoder.decode();
    this.pendingCr = false;
    return printable(text);
  }
}
