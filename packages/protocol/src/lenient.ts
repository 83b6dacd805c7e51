/**
 * Response schemas that ignore unknown fields. The daemon's answer schemas are strict objects so
 * that the daemon never sends what it did not mean to; a client of an older release reads them
 * through `lenientSchema`, so a newer daemon's added fields are dropped instead of failing the call.
 * Every known field keeps its type, bounds and refinements; requests stay strict.
 *
 * A signed plan is the exception: it goes back to the daemon to be admitted, and its signature
 * covers every field, so within it unknown fields are kept (checked fields still checked).
 */
import { z } from "zod";
import { SignedPlan } from "./plan.js";

type Mode = "strip" | "keep";
const caches: Record<Mode, WeakMap<z.core.$ZodType, z.core.$ZodType>> = { strip: new WeakMap(), keep: new WeakMap() };

/**
 * The same schema with every object, at any depth, accepting and dropping unknown keys.
 *
 * @example
 * lenientSchema(SandboxInfo).parse({ ...info, addedLater: 1 }); // `addedLater` is dropped
 */
export function lenientSchema<T extends z.core.$ZodType>(schema: T): T {
  return lenient(schema, "strip") as T;
}

function lenient(schema: z.core.$ZodType, mode: Mode): z.core.$ZodType {
  const known = caches[mode].get(schema);
  if (known !== undefined) return known;
  const out = rebuild(schema, schema === SignedPlan ? "keep" : mode);
  caches[mode].set(schema, out);
  return out;
}

type AnyDef = z.core.$ZodTypeDef & Record<string, unknown>;

function clone(schema: z.core.$ZodType, changes: Record<string, unknown>): z.core.$ZodType {
  const def = { ...(schema._zod.def as AnyDef), ...changes } as z.core.$ZodTypeDef;
  return new schema._zod.constr(def) as z.core.$ZodType;
}

function rebuild(schema: z.core.$ZodType, mode: Mode): z.core.$ZodType {
  const lenientSchema = (inner: z.core.$ZodType): z.core.$ZodType => lenient(inner, mode);
  const def = schema._zod.def as AnyDef;
  switch (def.type) {
    case "object": {
      const shape: Record<string, z.core.$ZodType> = {};
      for (const [key, field] of Object.entries(def.shape as Record<string, z.core.$ZodType>)) shape[key] = lenientSchema(field);
      // No catchall: unknown keys are stripped (zod's default for plain objects); "keep": passed through.
      return clone(schema, { shape, catchall: mode === "keep" ? z.unknown() : undefined });
    }
    case "array":
      return clone(schema, { element: lenientSchema(def.element as z.core.$ZodType) });
    case "optional":
    case "nullable":
    case "default":
    case "prefault":
    case "readonly":
    case "nonoptional":
    case "catch":
      return clone(schema, { innerType: lenientSchema(def.innerType as z.core.$ZodType) });
    case "union":
      return clone(schema, { options: (def.options as z.core.$ZodType[]).map((o) => lenientSchema(o)) });
    case "intersection":
      return clone(schema, { left: lenientSchema(def.left as z.core.$ZodType), right: lenientSchema(def.right as z.core.$ZodType) });
    case "pipe":
      return clone(schema, { in: lenientSchema(def.in as z.core.$ZodType), out: lenientSchema(def.out as z.core.$ZodType) });
    case "record":
      return clone(schema, { valueType: lenientSchema(def.valueType as z.core.$ZodType) });
    case "tuple":
      return clone(schema, { items: (def.items as z.core.$ZodType[]).map((i) => lenientSchema(i)) });
    default:
      return schema;
  }
}
