/**
 * Response schemas that ignore unknown fields. The daemon's answer schemas are strict objects so
 * that the daemon never sends what it did not mean to; a client of an older release reads them
 * through `lenientSchema`, so a newer daemon's added fields are dropped instead of failing the call.
 * Every known field keeps its type, bounds and refinements; requests stay strict.
 */
import { z } from "zod";

const cache = new WeakMap<z.core.$ZodType, z.core.$ZodType>();

/**
 * The same schema with every object, at any depth, accepting and dropping unknown keys.
 *
 * @example
 * lenientSchema(SandboxInfo).parse({ ...info, addedLater: 1 }); // `addedLater` is dropped
 */
export function lenientSchema<T extends z.core.$ZodType>(schema: T): T {
  const known = cache.get(schema);
  if (known !== undefined) return known as T;
  const out = rebuild(schema);
  cache.set(schema, out);
  return out as T;
}

type AnyDef = z.core.$ZodTypeDef & Record<string, unknown>;

function clone(schema: z.core.$ZodType, changes: Record<string, unknown>): z.core.$ZodType {
  const def = { ...(schema._zod.def as AnyDef), ...changes } as z.core.$ZodTypeDef;
  return new schema._zod.constr(def) as z.core.$ZodType;
}

function rebuild(schema: z.core.$ZodType): z.core.$ZodType {
  const def = schema._zod.def as AnyDef;
  switch (def.type) {
    case "object": {
      const shape: Record<string, z.core.$ZodType> = {};
      for (const [key, field] of Object.entries(def.shape as Record<string, z.core.$ZodType>)) shape[key] = lenientSchema(field);
      // No catchall: unknown keys are stripped (zod's default for plain objects).
      return clone(schema, { shape, catchall: undefined });
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
