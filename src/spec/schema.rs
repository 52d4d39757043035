//! The spec's part of the OpenAPI document. utoipa writes each field's `default` from the
//! types' `Default`s; its attributes take only literal bounds, so the ranges validation
//! checks are written in here, from the same constants.

use std::collections::BTreeMap;

use utoipa::Number;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::{OpenApi, RefOr};

use super::error::{Bound, Ranged};

type Schemas = BTreeMap<String, RefOr<Schema>>;

/// Fields whose default is worked out from other fields (the model's or the optimizer's
/// kind, or the name from both kinds): their descriptions say how, and no one value is
/// published.
const DERIVED: &[(&str, &str)] = &[
    ("JobSpec", "name"),
    ("JobSpec", "task"),
    ("ModelSpec", "norm"),
    ("ModelSpec", "activation"),
    ("OptimizerSpec", "weight_decay"),
];

/// Tagged enums whose kinds keep their settings in a struct of their own (for its
/// `Default`); the document shows each kind as one object, as for the other kinds.
const TAGGED: &[&str] = &["TaskSpec", "GradPolicy"];

/// Writes every spec range into `doc`'s component schemas, leaves no `default` on a
/// required or derived field, and shows each kind of a tagged enum as one object.
pub fn publish_ranges(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else { return };
    let schemas = &mut components.schemas;
    for ranged in super::ranges() {
        if let Some(property) = property(schemas, ranged.schema, ranged.property) {
            bound(property, ranged);
        }
    }
    for (name, schema) in schemas.iter_mut() {
        let RefOr::T(Schema::Object(object)) = schema else { continue };
        for (property, value) in &mut object.properties {
            if DERIVED.contains(&(name.as_str(), property.as_str())) || object.required.contains(property) {
                clear_default(value);
            }
        }
    }
    for name in TAGGED {
        inline_kinds(schemas, name);
    }
}

fn property<'a>(schemas: &'a mut Schemas, schema: &str, property: &str) -> Option<&'a mut Object> {
    let RefOr::T(Schema::Object(object)) = schemas.get_mut(schema)? else { return None };
    match object.properties.get_mut(property)? {
        RefOr::T(Schema::Object(field)) => Some(field),
        _ => None,
    }
}

fn bound(field: &mut Object, ranged: &Ranged) {
    match ranged.bound {
        Bound::Ints(range) => {
            field.minimum = Some(int(range.min));
            field.maximum = Some(int(range.max));
        }
        Bound::Reals(range) => {
            let low = Some(Number::Float(range.min));
            if range.above {
                field.exclusive_minimum = low;
            } else {
                field.minimum = low;
            }
            if range.max.is_finite() {
                let high = Some(Number::Float(range.max));
                if range.below {
                    field.exclusive_maximum = high;
                } else {
                    field.maximum = high;
                }
            }
        }
    }
}

fn int(value: i64) -> Number {
    match usize::try_from(value) {
        Ok(unsigned) => Number::UInt(unsigned),
        Err(_) => Number::Int(value as isize),
    }
}

/// Drops a field's `default`. A reference that utoipa wrapped in a one-item `oneOf` only
/// to carry the default becomes a plain reference again.
fn clear_default(schema: &mut RefOr<Schema>) {
    match schema {
        RefOr::T(Schema::Object(object)) => object.default = None,
        RefOr::T(Schema::OneOf(one_of)) => {
            one_of.default = None;
            if let [RefOr::Ref(only)] = one_of.items.as_slice() {
                *schema = RefOr::Ref(only.clone());
            }
        }
        _ => {}
    }
}

/// Turns each `allOf: [settings $ref, {kind}]` of tagged enum `name` into one object
/// holding `kind` and the settings' fields, and drops the settings' own component.
fn inline_kinds(schemas: &mut Schemas, name: &str) {
    let Some(RefOr::T(Schema::OneOf(mut one_of))) = schemas.remove(name) else { return };
    for item in &mut one_of.items {
        let RefOr::T(Schema::AllOf(all_of)) = item else { continue };
        let mut merged: Option<Object> = None;
        let mut kind: Option<Object> = None;
        for part in &all_of.items {
            match part {
                RefOr::Ref(settings) => {
                    let component = settings.ref_location.rsplit('/').next().unwrap_or_default();
                    if let Some(RefOr::T(Schema::Object(object))) = schemas.remove(component) {
                        merged = Some(object);
                    }
                }
                RefOr::T(Schema::Object(object)) => kind = Some(object.clone()),
                RefOr::T(_) => {}
            }
        }
        let (Some(mut object), Some(kind)) = (merged, kind) else { continue };
        for (field, schema) in kind.properties {
            object.properties.insert(field, schema);
        }
        object.required.extend(kind.required);
        object.description.clone_from(&all_of.description);
        // As the kinds without settings structs show: unknown fields are refused, which the
        // enum's description does not repeat per kind.
        object.additional_properties = None;
        *item = RefOr::T(Schema::Object(object));
    }
    schemas.insert(name.to_owned(), RefOr::T(Schema::OneOf(one_of)));
}
