//! Module rewriting at upload: export every mutable global the module defines.
//!
//! A call must start from the function's initial state, globals included — notably the C stack
//! pointer, which a call that ends in `proc_exit` or a trap leaves wherever it was. Wasmtime's API
//! reaches only exported globals, so each defined mutable global `i` gets an extra export
//! `__ebb_global_{i}`. Every other section is copied byte for byte. (Hand-written because no crate
//! does this one transformation; wasmparser and wasm-encoder do the parsing and encoding.)

use anyhow::{Context, bail};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// Prefix of the added exports.
pub const GLOBAL_EXPORT_PREFIX: &str = "__ebb_global_";

/// Returns `wasm` with every defined mutable global exported (idempotent).
pub fn export_mutable_globals(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    if wasm.starts_with(b"(") || !wasm.starts_with(b"\0asm") {
        bail!("not a binary wasm module");
    }
    // First pass: which global indexes are defined and mutable, and the existing exports.
    let mut imported_globals = 0u32;
    let mut mutable = Vec::new();
    let mut has_export_section = false;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.context("the module does not parse")? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Global(_) = import?.ty {
                        imported_globals += 1;
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for (i, global) in reader.into_iter().enumerate() {
                    if global?.ty.mutable {
                        mutable.push(imported_globals + u32::try_from(i)?);
                    }
                }
            }
            Payload::ExportSection(_) => has_export_section = true,
            _ => {}
        }
    }
    let mut out = Module::new();
    let mut exports_done = false;
    let extra = |section: &mut ExportSection| {
        for &g in &mutable {
            section.export(&format!("{GLOBAL_EXPORT_PREFIX}{g}"), ExportKind::Global, g);
        }
    };
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::ExportSection(reader) = &payload {
            let mut section = ExportSection::new();
            for export in reader.clone() {
                let export = export?;
                if export.name.starts_with(GLOBAL_EXPORT_PREFIX) {
                    continue; // Already rewritten once: replaced below.
                }
                let kind = match export.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                    ExternalKind::Table => ExportKind::Table,
                    ExternalKind::Memory => ExportKind::Memory,
                    ExternalKind::Global => ExportKind::Global,
                    ExternalKind::Tag => ExportKind::Tag,
                };
                section.export(export.name, kind, export.index);
            }
            extra(&mut section);
            out.section(&section);
            exports_done = true;
            continue;
        }
        let Some((id, range)) = payload.as_section() else { continue };
        // A module without exports gets the section where it belongs: before start/element/code.
        if !has_export_section && !exports_done && matches!(id, 8..=12) {
            let mut section = ExportSection::new();
            extra(&mut section);
            out.section(&section);
            exports_done = true;
        }
        let start = range.start;
        let end = range.end;
        out.section(&RawSection { id, data: &wasm[start..end] });
    }
    if !exports_done {
        let mut section = ExportSection::new();
        extra(&mut section);
        out.section(&section);
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_mutable_globals_once() {
        let wasm = wat::parse_str(
            r#"(module
                 (import "env" "g" (global i32))
                 (global $sp (mut i32) (i32.const 1024))
                 (global i32 (i32.const 5))
                 (global (mut i64) (i64.const 0))
                 (memory (export "memory") 1)
                 (func (export "_start") (global.set $sp (i32.const 0))))"#,
        )
        .unwrap();
        let out = export_mutable_globals(&wasm).unwrap();
        let again = export_mutable_globals(&out).unwrap();
        assert_eq!(out, again, "idempotent");
        let mut names = vec![];
        for p in Parser::new(0).parse_all(&out) {
            if let Payload::ExportSection(r) = p.unwrap() {
                names = r.into_iter().map(|e| e.unwrap().name.to_string()).collect();
            }
        }
        assert_eq!(names, ["memory", "_start", "__ebb_global_1", "__ebb_global_3"]);
        wasmparser::validate(&out).unwrap();
    }
}
