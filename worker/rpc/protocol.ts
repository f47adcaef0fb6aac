// The parts of rpc.capnp (level 1) we speak, as layout constants and message builders.
// Layouts from `capnp compile -ocapnp /usr/include/capnp/rpc.capnp`.
import { MessageBuilder } from "./wire.js";

export const enum MessageTag {
  Unimplemented = 0,
  Abort = 1,
  Call = 2,
  Return = 3,
  Finish = 4,
  Resolve = 5,
  Release = 6,
  ObsoleteSave = 7,
  Bootstrap = 8,
  ObsoleteDelete = 9,
  Provide = 10,
  Accept = 11,
  Join = 12,
  Disembargo = 13,
}

export const enum ReturnTag {
  Results = 0,
  Exception = 1,
  Canceled = 2,
  ResultsSentElsewhere = 3,
  TakeFromOtherQuestion = 4,
  AcceptFromThirdParty = 5,
}

export const enum TargetTag {
  ImportedCap = 0,
  PromisedAnswer = 1,
}

export const enum CapDescriptorTag {
  None = 0,
  SenderHosted = 1,
  SenderPromise = 2,
  ReceiverHosted = 3,
  ReceiverAnswer = 4,
  ThirdPartyHosted = 5,
}

export type ExceptionType = "failed" | "overloaded" | "disconnected" | "unimplemented";
export const EXCEPTION_TYPES: readonly ExceptionType[] = ["failed", "overloaded", "disconnected", "unimplemented"];

// Struct sizes (data words, pointers) and field offsets (bytes / bits / pointer index).
export const Layout = {
  Message: { data: 1, ptrs: 1 },
  Bootstrap: { data: 1, ptrs: 1, questionId: 0 },
  Call: { data: 3, ptrs: 3, questionId: 0, methodId: 4, sendResultsToTag: 6, interfaceId: 8, target: 0, params: 1 },
  Return: { data: 2, ptrs: 1, answerId: 0, releaseParamCapsBit: 32, tag: 6, takeFromOtherQuestion: 8, payload: 0 },
  Finish: { data: 1, ptrs: 0, questionId: 0, releaseResultCapsBit: 32 },
  Release: { data: 1, ptrs: 0, id: 0, referenceCount: 4 },
  Resolve: { data: 1, ptrs: 1, promiseId: 0, tag: 4 },
  Disembargo: { data: 1, ptrs: 1, target: 0, tag: 4, value: 0 },
  MessageTarget: { data: 1, ptrs: 1, importedCap: 0, tag: 4, promisedAnswer: 0 },
  PromisedAnswer: { data: 1, ptrs: 1, questionId: 0, transform: 0 },
  Op: { data: 1, ptrs: 0, tag: 0, pointerField: 2 },
  Payload: { data: 0, ptrs: 2, content: 0, capTable: 1 },
  CapDescriptor: { data: 1, ptrs: 1, tag: 0, id: 4, attachedFdByte: 2 },
  Exception: { data: 1, ptrs: 2, reason: 0, trace: 1, type: 4 },
} as const;

/** A message builder with the rpc Message struct in place; returns the body's data offset. */
export function startMessage(tag: MessageTag, bodyData: number, bodyPtrs: number, sizeHint?: number): { b: MessageBuilder; body: number } {
  const b = new MessageBuilder(sizeHint);
  const message = b.initStruct(b.root, Layout.Message.data, Layout.Message.ptrs);
  b.setU16(message, tag);
  const body = b.initStruct(message + 8, bodyData, bodyPtrs);
  return { b, body };
}

export function writeException(b: MessageBuilder, at: number, type: ExceptionType, reason: string): void {
  const e = b.initStruct(at, Layout.Exception.data, Layout.Exception.ptrs);
  b.setText(e + 8 + Layout.Exception.reason * 8, reason);
  b.setU16(e + Layout.Exception.type, EXCEPTION_TYPES.indexOf(type));
}

export function abortMessage(reason: string): Buffer {
  const b = new MessageBuilder(128 + reason.length * 3);
  const message = b.initStruct(b.root, 1, 1);
  b.setU16(message, MessageTag.Abort);
  writeException(b, message + 8, "failed", reason);
  return b.finish();
}

export function finishMessage(questionId: number, releaseResultCaps: boolean): Buffer {
  const { b, body } = startMessage(MessageTag.Finish, Layout.Finish.data, Layout.Finish.ptrs, 48);
  b.setU32(body + Layout.Finish.questionId, questionId);
  b.setBool(body, Layout.Finish.releaseResultCapsBit, releaseResultCaps, true);
  return b.finish();
}

export function releaseMessage(id: number, referenceCount: number): Buffer {
  const { b, body } = startMessage(MessageTag.Release, Layout.Release.data, Layout.Release.ptrs, 48);
  b.setU32(body + Layout.Release.id, id);
  b.setU32(body + Layout.Release.referenceCount, referenceCount);
  return b.finish();
}

export function bootstrapMessage(questionId: number): Buffer {
  const { b, body } = startMessage(MessageTag.Bootstrap, Layout.Bootstrap.data, Layout.Bootstrap.ptrs, 48);
  b.setU32(body + Layout.Bootstrap.questionId, questionId);
  return b.finish();
}

/** A Return carrying an exception. */
export function exceptionReturn(answerId: number, type: ExceptionType, reason: string): Buffer {
  const { b, body } = startMessage(MessageTag.Return, Layout.Return.data, Layout.Return.ptrs, 128 + reason.length * 3);
  b.setU32(body + Layout.Return.answerId, answerId);
  b.setU16(body + Layout.Return.tag, ReturnTag.Exception);
  writeException(b, body + Layout.Return.data * 8, type, reason);
  return b.finish();
}

/** A Return whose results are one capability, hosted by us under exportId (the bootstrap answer). */
export function capabilityReturn(answerId: number, exportId: number): Buffer {
  const { b, body } = startMessage(MessageTag.Return, Layout.Return.data, Layout.Return.ptrs, 160);
  b.setU32(body + Layout.Return.answerId, answerId);
  b.setU16(body + Layout.Return.tag, ReturnTag.Results);
  const payload = b.initStruct(body + Layout.Return.data * 8, Layout.Payload.data, Layout.Payload.ptrs);
  b.setCapability(payload + Layout.Payload.content * 8, 0);
  const table = b.initStructList(payload + Layout.Payload.capTable * 8, 1, Layout.CapDescriptor.data, Layout.CapDescriptor.ptrs);
  b.setU16(table + Layout.CapDescriptor.tag, CapDescriptorTag.SenderHosted);
  b.setU32(table + Layout.CapDescriptor.id, exportId);
  // attachedFd keeps its default (255, "no fd"), which is stored as zero.
  return b.finish();
}

/**
 * A Return with results: `writeContent` fills the content pointer at the given offset.
 * The capTable stays empty: Worker results carry no capabilities.
 */
export function resultsReturn(answerId: number, writeContent: (b: MessageBuilder, at: number) => void, sizeHint?: number): Buffer {
  const { b, body } = startMessage(MessageTag.Return, Layout.Return.data, Layout.Return.ptrs, sizeHint ?? 256);
  b.setU32(body + Layout.Return.answerId, answerId);
  b.setU16(body + Layout.Return.tag, ReturnTag.Results);
  const payload = b.initStruct(body + Layout.Return.data * 8, Layout.Payload.data, Layout.Payload.ptrs);
  writeContent(b, payload + Layout.Payload.content * 8);
  return b.finish();
}

export type CallTarget = { kind: "import"; id: number } | { kind: "answer"; questionId: number };

/** A Call; `writeParams` fills the params content pointer. */
export function callMessage(
  questionId: number,
  target: CallTarget,
  interfaceId: bigint,
  methodId: number,
  writeParams: ((b: MessageBuilder, at: number) => void) | undefined,
  sizeHint?: number,
): Buffer {
  const { b, body } = startMessage(MessageTag.Call, Layout.Call.data, Layout.Call.ptrs, sizeHint ?? 256);
  b.setU32(body + Layout.Call.questionId, questionId);
  b.setU16(body + Layout.Call.methodId, methodId);
  b.setU64(body + Layout.Call.interfaceId, interfaceId);
  const ptrs = body + Layout.Call.data * 8;
  const t = b.initStruct(ptrs + Layout.Call.target * 8, Layout.MessageTarget.data, Layout.MessageTarget.ptrs);
  if (target.kind === "import") {
    b.setU32(t + Layout.MessageTarget.importedCap, target.id);
  } else {
    b.setU16(t + Layout.MessageTarget.tag, TargetTag.PromisedAnswer);
    const promised = b.initStruct(t + 8, Layout.PromisedAnswer.data, Layout.PromisedAnswer.ptrs);
    b.setU32(promised + Layout.PromisedAnswer.questionId, target.questionId);
  }
  const payload = b.initStruct(ptrs + Layout.Call.params * 8, Layout.Payload.data, Layout.Payload.ptrs);
  if (writeParams) writeParams(b, payload + Layout.Payload.content * 8);
  else b.initStruct(payload + Layout.Payload.content * 8, 0, 0);
  return b.finish();
}
