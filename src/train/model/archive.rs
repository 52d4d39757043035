//! A TorchScript module's registered buffers (batch norm's running statistics, anything
//! `register_buffer` kept), read from the saved archive. LibTorch's C API as tch 0.24
//! exposes it lists a module's parameters only (`named_parameters`), so the buffers come
//! from the file itself, as PyTorch's `named_buffers()` would list them: in module order
//! (a module's own buffers, then its submodules'), by dotted name, with their shapes and
//! element types; a buffer that is `None` is not listed.
//!
//! A TorchScript file is a zip archive. `…/data.pkl` pickles the module tree: each module
//! an object of a class `__torch__.…`, its attributes a dict, each tensor rebuilt by
//! `torch._utils._rebuild_tensor_v2` from a storage (the element type) and a size. The
//! class's source, `…/code/<module path>.py`, declares which attributes are buffers
//! (`__buffers__ = ["running_mean", …]`); other tensor attributes are parameters or plain
//! attributes. Only the pickle opcodes such an archive uses are read; anything else is an
//! error, never a guess. Every count is bounded: the sizes of the files read, the pickle
//! machine's stack and memo, the module tree's depth.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow, bail, ensure};

use crate::store::TensorInfo;

/// Largest `data.pkl` or class source read: both are a module tree's description, not
/// its tensors (those are separate entries), so far smaller.
const MAX_ENTRY: u64 = 64 << 20;
/// Deepest module tree walked.
const MAX_DEPTH: usize = 256;
/// Most values on the pickle machine's stack and in its memo.
const MAX_VALUES: usize = 1 << 22;
/// Most buffers listed.
const MAX_BUFFERS: usize = 1 << 16;

/// The registered buffers of the TorchScript module in `file`, in `named_buffers()` order.
pub fn buffers(file: &Path) -> anyhow::Result<Vec<TensorInfo>> {
    let reader = std::fs::File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    let mut zip = zip::ZipArchive::new(reader).context("not a zip archive")?;
    let pickle_name = zip
        .file_names()
        .find(|name| name.ends_with("/data.pkl") && name.matches('/').count() == 1)
        .map(str::to_owned)
        .context("the archive has no data.pkl")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
    let root = Unpickler::new(&read_entry(&mut zip, &pickle_name)?).run()?;
    let mut walk = Walk { zip: &mut zip, prefix, classes: HashMap::new(), out: Vec::new() };
    walk.module(&root, "", 0)?;
    Ok(walk.out)
}

fn read_entry<R: std::io::Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> anyhow::Result<Vec<u8>> {
    let entry = zip.by_name(name).with_context(|| format!("the archive has no {name}"))?;
    ensure!(entry.size() <= MAX_ENTRY, "{name} is larger than {MAX_ENTRY} bytes");
    let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
    entry.take(MAX_ENTRY).read_to_end(&mut bytes).with_context(|| format!("failed to read {name}"))?;
    Ok(bytes)
}

/// What `data.pkl` holds, as far as a module tree needs.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A class or function: module and name.
    Global(String, String),
    /// An instance of a class, with the state `BUILD` gave it.
    Object {
        module: String,
        name: String,
        state: Box<Value>,
    },
    /// A persistent id (a tensor's storage).
    Persistent(Box<Value>),
    Tensor {
        dtype: String,
        shape: Vec<i64>,
    },
}

/// The subset of Python's pickle machine (protocol 2, as TorchScript writes) a module
/// tree uses.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).context("data.pkl ends too early")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn len(&mut self, bytes: usize) -> anyhow::Result<usize> {
        let raw = self.take(bytes)?;
        let mut buf = [0u8; 8];
        buf[..bytes].copy_from_slice(raw);
        usize::try_from(u64::from_le_bytes(buf)).context("a length too large")
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').context("data.pkl ends too early")?;
        let line = String::from_utf8(rest[..end].to_vec()).context("a name that is not UTF-8")?;
        self.pos += end + 1;
        Ok(line)
    }

    fn string(&mut self, len: usize) -> anyhow::Result<Value> {
        Ok(Value::Str(String::from_utf8(self.take(len)?.to_vec()).context("a string that is not UTF-8")?))
    }

    fn push(&mut self, value: Value) -> anyhow::Result<()> {
        ensure!(self.stack.len() < MAX_VALUES, "data.pkl holds too many values");
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> anyhow::Result<Value> {
        self.stack.pop().context("data.pkl pops an empty stack")
    }

    /// The values pushed since the last mark.
    fn pop_mark(&mut self) -> anyhow::Result<Vec<Value>> {
        let mark = self.marks.pop().context("data.pkl has no mark")?;
        ensure!(mark <= self.stack.len(), "data.pkl's mark is past its stack");
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> anyhow::Result<&mut Value> {
        self.stack.last_mut().context("data.pkl works on an empty stack")
    }

    fn memoize(&mut self, key: u32) -> anyhow::Result<()> {
        ensure!(self.memo.len() < MAX_VALUES, "data.pkl memoizes too many values");
        let value = self.stack.last().context("data.pkl memoizes an empty stack")?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn get(&mut self, key: u32) -> anyhow::Result<()> {
        let value = self.memo.get(&key).with_context(|| format!("data.pkl reads memo {key}, never written"))?.clone();
        self.push(value)
    }

    fn run(mut self) -> anyhow::Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.push(Value::Global(module, name))?;
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        bail!("data.pkl's STACK_GLOBAL takes two strings");
                    };
                    self.push(Value::Global(module, name))?;
                }
                b'q' => {
                    let key = self.u8()?;
                    self.memoize(key.into())?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memoize(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len())?;
                    self.memoize(key)?;
                }
                b'h' => {
                    let key = self.u8()?;
                    self.get(key.into())?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.get(key)?;
                }
                b'(' => {
                    ensure!(self.marks.len() < MAX_VALUES, "data.pkl holds too many marks");
                    self.marks.push(self.stack.len());
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    ensure!(self.stack.len() >= n, "data.pkl builds a tuple from too few values");
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let Value::List(list) = self.top()? else { bail!("data.pkl appends to a non-list") };
                    list.push(item);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(list) = self.top()? else { bail!("data.pkl appends to a non-list") };
                    list.extend(items);
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(pairs(items)?))?;
                }
                b's' => {
                    let (value, key) = (self.pop()?, self.pop()?);
                    let Value::Dict(dict) = self.top()? else { bail!("data.pkl sets an item of a non-dict") };
                    dict.push((key, value));
                }
                b'u' => {
                    let items = pairs(self.pop_mark()?)?;
                    let Value::Dict(dict) = self.top()? else { bail!("data.pkl sets items of a non-dict") };
                    dict.extend(items);
                }
                0x81 => {
                    let (_args, class) = (self.pop()?, self.pop()?);
                    let Value::Global(module, name) = class else { bail!("data.pkl's NEWOBJ takes a class") };
                    self.push(Value::Object { module, name, state: Box::new(Value::None) })?;
                }
                b'R' => {
                    let (args, callable) = (self.pop()?, self.pop()?);
                    let value = reduce(callable, args)?;
                    self.push(value)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Object { state: slot, .. } => **slot = state,
                        // `OrderedDict()` rebuilt as a dict, given its items by BUILD.
                        Value::Dict(_) => {}
                        _ => bail!("data.pkl's BUILD works on a non-object"),
                    }
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::Persistent(Box::new(id)))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into()?);
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    ensure!(n <= 8, "data.pkl holds an integer wider than 64 bits");
                    let bytes = self.take(n)?;
                    let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) { 0xff } else { 0 };
                    let mut buf = [fill; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.push(Value::Float(v))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'X' => {
                    let n = self.len(4)?;
                    let s = self.string(n)?;
                    self.push(s)?;
                }
                0x8c => {
                    let n = self.len(1)?;
                    let s = self.string(n)?;
                    self.push(s)?;
                }
                0x8d => {
                    let n = self.len(8)?;
                    let s = self.string(n)?;
                    self.push(s)?;
                }
                b'B' | b'C' | 0x8e => {
                    let n = self.len(match op {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    })?;
                    self.take(n)?;
                    self.push(Value::Bytes)?;
                }
                other => bail!("data.pkl uses pickle opcode {other:#04x}, which this reader does not know"),
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> anyhow::Result<Vec<(Value, Value)>> {
    ensure!(items.len().is_multiple_of(2), "data.pkl sets a key without a value");
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// What calling `callable` with `args` makes: a tensor (its element type and size), an
/// empty `OrderedDict`, or an object of a class.
fn reduce(callable: Value, args: Value) -> anyhow::Result<Value> {
    let Value::Global(module, name) = callable else { bail!("data.pkl calls something that is not a global") };
    let Value::Tuple(args) = args else { bail!("data.pkl calls {module}.{name} without a tuple") };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            // (storage, offset, size, stride, …); the storage is ('storage', class, key,
            // location, numel), its class naming the element type.
            let dtype = match args.first() {
                Some(Value::Persistent(id)) => match id.as_ref() {
                    Value::Tuple(parts) => match parts.get(1) {
                        Some(Value::Global(_, storage)) => storage_dtype(storage),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| anyhow!("a tensor in data.pkl has a storage of an unknown type"))?;
            let Some(Value::Tuple(size)) = args.get(2) else { bail!("a tensor in data.pkl has no size") };
            let shape = size
                .iter()
                .map(|d| match d {
                    Value::Int(n) => Ok(*n),
                    _ => Err(anyhow!("a tensor in data.pkl has a size that is not integers")),
                })
                .collect::<anyhow::Result<Vec<i64>>>()?;
            Ok(Value::Tensor { dtype: dtype.to_owned(), shape })
        }
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Object { module, name, state: Box::new(Value::None) }),
    }
}

/// The contract's element type of a typed storage class.
fn storage_dtype(storage: &str) -> Option<&'static str> {
    Some(match storage {
        "FloatStorage" => "float32",
        "DoubleStorage" => "float64",
        "HalfStorage" => "float16",
        "BFloat16Storage" => "bfloat16",
        "LongStorage" => "int64",
        "IntStorage" => "int32",
        "ShortStorage" => "int16",
        "CharStorage" => "int8",
        "ByteStorage" => "uint8",
        "BoolStorage" => "bool",
        _ => return None,
    })
}

/// The module tree, walked in `named_buffers()` order.
struct Walk<'z, R> {
    zip: &'z mut zip::ZipArchive<R>,
    /// The archive's folder (`archive/`, or the file's stem).
    prefix: String,
    /// Each class's declared buffers, by `module.Name`.
    classes: HashMap<String, Vec<String>>,
    out: Vec<TensorInfo>,
}

impl<R: std::io::Read + std::io::Seek> Walk<'_, R> {
    fn module(&mut self, value: &Value, path: &str, depth: usize) -> anyhow::Result<()> {
        ensure!(depth < MAX_DEPTH, "the module tree is deeper than {MAX_DEPTH}");
        let Value::Object { module, name, state } = value else { return Ok(()) };
        let Value::Dict(attributes) = state.as_ref() else { return Ok(()) };
        let declared = self.declared(module, name)?;
        let named = |key: &Value| match key {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        };
        for (key, value) in attributes {
            if let (Some(attr), Value::Tensor { dtype, shape }) = (named(key), value)
                && declared.contains(&attr)
            {
                ensure!(self.out.len() < MAX_BUFFERS, "the module has more than {MAX_BUFFERS} buffers");
                self.out.push(TensorInfo {
                    name: format!("{path}{attr}"),
                    dtype: dtype.clone(),
                    numel: shape.iter().product(),
                    shape: shape.clone(),
                });
            }
        }
        for (key, value) in attributes {
            if let (Some(attr), Value::Object { .. }) = (named(key), value) {
                self.module(value, &format!("{path}{attr}."), depth + 1)?;
            }
        }
        Ok(())
    }

    /// The buffers class `module.name` declares (`__buffers__` in its source); none for a
    /// class that is not a module.
    fn declared(&mut self, module: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let key = format!("{module}.{name}");
        if let Some(known) = self.classes.get(&key) {
            return Ok(known.clone());
        }
        let file = format!("{}code/{}.py", self.prefix, module.replace('.', "/"));
        // A class without source of its own (not a module) declares no buffers.
        let has_source = self.zip.by_name(&file).is_ok();
        let declared = if has_source {
            class_buffers(&String::from_utf8_lossy(&read_entry(self.zip, &file)?), name).unwrap_or_default()
        } else {
            Vec::new()
        };
        self.classes.insert(key, declared.clone());
        Ok(declared)
    }
}

/// The names in `__buffers__ = ["a", "b", ]` of class `name` in `source`, if it declares them.
fn class_buffers(source: &str, name: &str) -> Option<Vec<String>> {
    let header = format!("class {name}(");
    let mut lines = source.lines().skip_while(|l| !l.starts_with(&header)).skip(1);
    let line = lines.by_ref().take_while(|l| l.starts_with(' ')).find(|l| l.trim_start().starts_with("__buffers__"))?;
    let list = line.split_once('=')?.1.trim();
    let inner = list.strip_prefix('[')?.strip_suffix(']')?;
    Some(inner.split(',').map(|s| s.trim().trim_matches('"').to_owned()).filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_declares_its_buffers_in_its_source() {
        let source = "class Linear(Module):\n  __parameters__ = [\"weight\", ]\n  __buffers__ = []\nclass BatchNorm1d(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  __buffers__ = [\"running_mean\", \"running_var\", \"num_batches_tracked\", ]\n  weight : Tensor\n";
        assert_eq!(class_buffers(source, "Linear"), Some(Vec::new()));
        assert_eq!(
            class_buffers(source, "BatchNorm1d"),
            Some(vec!["running_mean".to_owned(), "running_var".to_owned(), "num_batches_tracked".to_owned()])
        );
        assert_eq!(class_buffers(source, "Missing"), None);
    }

    #[test]
    fn a_truncated_or_unknown_pickle_is_an_error_not_a_panic() {
        // PROTO 2, EMPTY_DICT, then the end: no STOP.
        assert!(Unpickler::new(&[0x80, 2, b'}']).run().is_err());
        // An opcode the reader does not know.
        assert!(Unpickler::new(&[0x80, 2, b'i']).run().is_err());
        // Popping past a mark, reading a memo never written.
        assert!(Unpickler::new(b"t.").run().is_err());
        assert!(Unpickler::new(&[b'h', 7, b'.']).run().is_err());
        // LONG1 of 200 bytes.
        assert!(Unpickler::new(&[0x8a, 200, 0, b'.']).run().is_err());
    }

    #[test]
    fn a_small_module_tree_unpickles() {
        // {"training": True, "n": -2}, built into an object of class __torch__.M.
        let mut data = vec![0x80, 2, b'c'];
        data.extend_from_slice(b"__torch__\nM\n");
        data.extend_from_slice(&[b')', 0x81, b'}', b'(']);
        data.extend_from_slice(&[0x8c, 8]);
        data.extend_from_slice(b"training");
        data.push(0x88);
        data.extend_from_slice(&[0x8c, 1, b'n', 0x8a, 1, 0xfe, b'u', b'b', b'.']);
        let value = Unpickler::new(&data).run().expect("unpickles");
        let Value::Object { module, name, state } = value else { panic!("not an object") };
        assert_eq!((module.as_str(), name.as_str()), ("__torch__", "M"));
        assert_eq!(
            *state,
            Value::Dict(vec![
                (Value::Str("training".to_owned()), Value::Bool(true)),
                (Value::Str("n".to_owned()), Value::Int(-2)),
            ])
        );
    }
}
