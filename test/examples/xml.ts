// A small strict XML parser for the examples' SVG: it throws on anything not well-formed (an
// unclosed or mismatched tag, an unquoted or repeated attribute, a bare "<" or "&", more than one
// root, text outside the root) and answers the element tree, so tests can look inside it.

export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  /** The element's own text (not its children's), entities decoded. */
  text: string;
}

const NAME = /^[A-Za-z_:][A-Za-z0-9_:.-]*/;
const ENTITIES: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

function decode(text: string, where: number): string {
  if (text.includes("<")) throw new Error(`bare "<" at ${where}`);
  return text.replace(/&([^;]*);?/g, (whole, body: string) => {
    if (!whole.endsWith(";")) throw new Error(`bare "&" at ${where}`);
    if (body in ENTITIES) return ENTITIES[body]!;
    const code = /^#(\d+)$/.exec(body)?.[1] ?? (/^#x([0-9a-f]+)$/i.exec(body) ? Number.parseInt(body.slice(2), 16) : undefined);
    if (code === undefined) throw new Error(`unknown entity &${body}; at ${where}`);
    return String.fromCodePoint(Number(code));
  });
}

export function parseXml(source: string): XmlElement {
  let at = 0;
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  const fail = (message: string): never => {
    throw new Error(`${message} at offset ${at}: ${JSON.stringify(source.slice(at, at + 40))}`);
  };
  if (source.startsWith("<?xml")) {
    at = source.indexOf("?>") + 2;
    if (at < 2) fail("unterminated XML declaration");
  }
  while (at < source.length) {
    const lt = source.indexOf("<", at);
    const text = source.slice(at, lt === -1 ? source.length : lt);
    if (text.trim()) {
      if (!stack.length) fail("text outside the root element");
      stack.at(-1)!.text += decode(text, at);
    }
    if (lt === -1) break;
    at = lt;
    if (source.startsWith("<!--", at)) {
      const end = source.indexOf("-->", at);
      if (end === -1) fail("unterminated comment");
      at = end + 3;
    } else if (source.startsWith("</", at)) {
      const name = NAME.exec(source.slice(at + 2))?.[0] ?? fail("bad closing tag");
      const open = stack.pop() ?? fail(`closing </${name}> with nothing open`);
      if (open.name !== name) fail(`</${name}> closes <${open.name}>`);
      at += 2 + name.length;
      at += /^\s*/.exec(source.slice(at))![0].length;
      if (source[at] !== ">") fail("expected >");
      at++;
    } else {
      const name = NAME.exec(source.slice(at + 1))?.[0] ?? fail("bad tag name");
      const element: XmlElement = { name, attrs: {}, children: [], text: "" };
      at += 1 + name.length;
      for (;;) {
        const space = /^\s*/.exec(source.slice(at))![0].length;
        at += space;
        if (source.startsWith("/>", at) || source[at] === ">") break;
        if (!space) fail("expected whitespace before an attribute");
        const attr = /^([A-Za-z_:][A-Za-z0-9_:.-]*)\s*=\s*(["'])/.exec(source.slice(at)) ?? fail("bad attribute");
        const valueStart = at + attr[0].length;
        const valueEnd = source.indexOf(attr[2]!, valueStart);
        if (valueEnd === -1) fail("unterminated attribute value");
        if (attr[1]! in element.attrs) fail(`repeated attribute ${attr[1]}`);
        element.attrs[attr[1]!] = decode(source.slice(valueStart, valueEnd), valueStart);
        at = valueEnd + 1;
      }
      if (stack.length) stack.at(-1)!.children.push(element);
      else if (root) fail("a second root element");
      else root = element;
      if (source[at] === ">") {
        stack.push(element);
        at++;
      } else {
        at += 2;
      }
    }
  }
  if (stack.length) throw new Error(`unclosed <${stack.at(-1)!.name}>`);
  if (!root) throw new Error("no root element");
  return root;
}

/** Every element below (and including) `element`, depth first. */
export function allElements(element: XmlElement): XmlElement[] {
  return [element, ...element.children.flatMap(allElements)];
}
