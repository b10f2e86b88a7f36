//! Element-wise float regions between 8-bit tensors, as one 256-entry lookup table.
//!
//! An ONNX Runtime-quantized graph leaves every operator it has no integer kernel for
//! as float between DequantizeLinear and QuantizeLinear. Where such a region reads a
//! single 8-bit tensor and computes each output element from the element at the same
//! place, its result is a function of one byte: it has at most 256 values. tract folds
//! the simplest case (a chain of single-successor unary ops from one DequantizeLinear to
//! one QuantizeLinear) into a table; MobileNetV3's hard-swish, `x · relu6(x + 3) / 6`,
//! is not a chain: `x` feeds both the product and the `x + 3` branch, and ONNX Runtime
//! quantizes each intermediate, so it stays float and costs a dequantization of two
//! tensors, a product and a quantization per element.
//!
//! [`consider`] takes a quantize node (or one of tract's tables, to fold the tables
//! that follow a region into it) and walks back through the element-wise nodes that
//! feed it: unary ops, quantize and dequantize, tables, and binary ops whose other
//! operand is a single constant or also comes from the region. When the walk ends at
//! one 8-bit tensor, the sink's output is taken from tract's lookup table instead,
//! computed by running the region's own operators on the 256 possible bytes. The
//! region's nodes go with it unless something else reads them (the dequantized input
//! that other layers also take, say): those stay for their other readers. The table gives the bytes the region gives,
//! element for element (the tests check it against the unfused graph), and serializes
//! to NNEF as `perch_lut`.

use std::collections::{BTreeMap, HashSet};

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::identity::Identity;
use tract_core::ops::quant::{lookup_table, DequantizeLinearF32, LookupTable};
use tract_core::tract_linalg::lut::Lut;

use super::kernel_node::{Considered, KernelNode};
use super::qdq::quantize_inverse;
use crate::kernels::q8::lut::QLut;
use crate::kernels::Cpu;

const PATTERN: &str = "element-wise region";

/// tract's lookup table with its lookups on Perch's kernel ([`crate::kernels::q8::lut`]).
#[derive(Debug, Clone)]
struct PerchTable(QLut);

impl Lut for PerchTable {
    fn table(&self) -> &[u8] {
        self.0.table()
    }

    fn run(&self, buf: &mut [u8]) {
        self.0.run_in_place(buf)
    }
}

/// tract's lookup-table operator for `table` (256 entries), on the kernel planned for
/// `cpu`, and the kernel's name.
pub(super) fn table_op(table: &[u8], cpu: Cpu) -> TractResult<(ElementWiseOp, &'static str)> {
    let lut = QLut::plan(table, cpu).map_err(|e| format_err!("lookup table: {}", e.0))?;
    let name = lut.variant().name;
    Ok((lookup_table(Box::new(PerchTable(lut))), name))
}

/// Puts every table in `model` (tract's own folds among them) on Perch's kernel.
pub(super) fn replan_tables(model: &mut TypedModel, cpu: Cpu) -> TractResult<()> {
    for id in model.eval_order()? {
        let Some(lut) = table_of(model.node(id)) else {
            continue;
        };
        let (op, _) = table_op(lut.table.table(), cpu)?;
        model.node_mut(id).op = Box::new(op);
    }
    Ok(())
}

/// A region found by [`region`]: its 8-bit input and its nodes in evaluation order
/// (the sink last).
struct Region {
    source: OutletId,
    nodes: Vec<usize>,
}

/// Whether `node` ends an element-wise region of one 8-bit tensor; if it does, the patch
/// that puts a lookup table in its place.
pub(super) fn consider(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> TractResult<Considered> {
    if quantize_inverse(node).is_none() && table_of(node).is_none() {
        return Ok(None);
    }
    let Some(region) = region(model, node)? else {
        return Ok(None);
    };
    let dt = model.outlet_fact(region.source)?.datum_type;
    let table = table(model, &region, dt)?;
    let (op, kernel) = table_op(&table, cpu)?;
    let mut patch = TypedModelPatch::new(format!("perch lut {}", node.name));
    let tap = patch.tap_model(model, region.source)?;
    let out = patch.wire_node(&node.name, op, &[tap])?[0];
    patch.shunt_outside(model, OutletId::new(node.id, 0), out)?;
    let mut fused: Vec<String> = region
        .nodes
        .iter()
        .filter(|id| **id != node.id)
        .map(|id| model.node(*id).name.clone())
        .collect();
    fused.sort();
    fused.dedup();
    let name = if dt == i8::datum_type() { "i8" } else { "u8" };
    let detail = format!("{name} -> {name}, one 256-entry table");
    let report = KernelNode::planned(&node.name, PATTERN, detail, kernel, fused);
    Ok(Some((Some(patch), report)))
}

/// The table `node` looks its bytes up in, if it is one of tract's lookup tables.
fn table_of(node: &TypedNode) -> Option<&LookupTable> {
    node.op_as::<ElementWiseOp>()?
        .0
        .downcast_ref::<LookupTable>()
}

/// Whether the walk may pass through `node`: one output computed element by element
/// from its inputs at the same place.
fn element_wise(node: &TypedNode) -> bool {
    node.outputs.len() == 1
        && (node.op_is::<ElementWiseOp>()
            || node.op_is::<Cast>()
            || node.op_is::<Identity>()
            || node.op_is::<DequantizeLinearF32>()
            || node.op_is::<TypedBinOp>())
}

/// The region ending at `sink` (a quantize node or a table), if it reads one 8-bit
/// tensor of the sink's type and shape and holds more than the sink.
///
/// The walk first goes as far back as the element-wise nodes go. When that ends at more
/// than one tensor (a float one, say: the graph's input before its quantize node), it is
/// tried again stopping at each 8-bit tensor it passed, the farthest first.
fn region(model: &TypedModel, sink: &TypedNode) -> TractResult<Option<Region>> {
    let position: HashMap<usize, usize> = model
        .eval_order()?
        .into_iter()
        .enumerate()
        .map(|(at, id)| (id, at))
        .collect();
    let (found, passed) = walk(model, sink, &position, None)?;
    if found.is_some() {
        return Ok(found);
    }
    for stop in passed {
        if let (Some(region), _) = walk(model, sink, &position, Some(stop))? {
            return Ok(Some(region));
        }
    }
    Ok(None)
}

/// One walk back from `sink`, not past `stop`: the region if it is one, and the 8-bit
/// tensors the walk went past, the farthest first.
fn walk(
    model: &TypedModel,
    sink: &TypedNode,
    position: &HashMap<usize, usize>,
    stop: Option<OutletId>,
) -> TractResult<(Option<Region>, Vec<OutletId>)> {
    let output = model.outlet_fact(OutletId::new(sink.id, 0))?;
    // Visited latest first: each node once, after every node of the region it feeds.
    let mut pending: BTreeMap<usize, usize> = BTreeMap::new();
    let mut inside: HashSet<usize> = HashSet::from([sink.id]);
    let mut sources: Vec<OutletId> = vec![];
    let mut passed: Vec<(usize, OutletId)> = vec![];
    let Some(&at) = position.get(&sink.inputs[0].node) else {
        return Ok((None, vec![]));
    };
    pending.insert(at, sink.inputs[0].node);
    while let Some((at, id)) = pending.pop_last() {
        let node = model.node(id);
        let outlet = OutletId::new(id, 0);
        if Some(outlet) == stop || !element_wise(node) {
            if !sources.contains(&outlet) {
                sources.push(outlet);
            }
            continue;
        }
        let fact = model.outlet_fact(outlet)?;
        if fact.shape != output.shape {
            return Ok((None, vec![]));
        }
        if eight_bits(fact.datum_type) {
            passed.push((at, outlet));
        }
        inside.insert(id);
        for input in &node.inputs {
            let fact = model.outlet_fact(*input)?;
            if let Some(k) = &fact.konst {
                // A constant operand must be the same for every element.
                if k.len() != 1 {
                    return Ok((None, vec![]));
                }
                continue;
            }
            let Some(&at) = position.get(&input.node) else {
                return Ok((None, vec![]));
            };
            pending.insert(at, input.node);
        }
    }
    passed.sort();
    let passed = passed.into_iter().map(|(_, outlet)| outlet).collect();
    let [source] = sources[..] else {
        return Ok((None, passed));
    };
    let fact = model.outlet_fact(source)?;
    if !eight_bits(fact.datum_type)
        || fact.datum_type != output.datum_type
        || fact.shape != output.shape
        || inside.len() < 2
    {
        return Ok((None, passed));
    }
    let mut nodes: Vec<usize> = inside.into_iter().collect();
    nodes.sort_by_key(|id| position.get(id).copied().unwrap_or(usize::MAX));
    Ok((Some(Region { source, nodes }), passed))
}

/// Plain 8-bit integers: what tract's tables take.
fn eight_bits(dt: DatumType) -> bool {
    dt == u8::datum_type() || dt == i8::datum_type()
}

/// The region's bytes for each of the 256 values of its input, computed by running its
/// own operators on them in an ad-hoc model (constants become one-element tensors).
fn table(model: &TypedModel, region: &Region, dt: DatumType) -> TractResult<Vec<u8>> {
    let mut adhoc = TypedModel::default();
    let mut wires: HashMap<OutletId, OutletId> = HashMap::new();
    let input = adhoc.add_source("bytes", dt.fact([256]))?;
    wires.insert(region.source, input);
    let mut last = input;
    for id in &region.nodes {
        let node = model.node(*id);
        let mut inputs = tvec![];
        for (ix, i) in node.inputs.iter().enumerate() {
            if let Some(wire) = wires.get(i) {
                inputs.push(*wire);
                continue;
            }
            let k = model.outlet_fact(*i)?.konst.clone().with_context(|| {
                format!(
                    "{}: input {ix} is neither in the region nor constant",
                    node.name
                )
            })?;
            let k = k.clone().into_tensor().into_shape(&[1])?;
            inputs.push(adhoc.add_const(format!("{}.{ix}", node.name), k)?);
        }
        last = adhoc.wire_node(&*node.name, node.op.clone(), &inputs)?[0];
        wires.insert(OutletId::new(*id, 0), last);
    }
    adhoc.select_output_outlets(&[last])?;
    // tract's tables are indexed by the byte's bits: an i8 input of -128 is entry 128.
    let bits: Vec<u8> = (u8::MIN..=u8::MAX).collect();
    let bytes: Tensor = if dt == i8::datum_type() {
        tensor1(&bits.iter().map(|b| *b as i8).collect::<Vec<i8>>())
    } else {
        tensor1(&bits)
    };
    let mut output = SimplePlan::new(adhoc)?.run(tvec!(bytes.into_tvalue()))?;
    let output = output.remove(0).into_tensor();
    ensure!(
        output.datum_type() == dt && output.len() == 256,
        "region table: got {output:?}"
    );
    let table = output.try_as_plain_ram()?.as_bytes().to_vec();
    Ok(table)
}
