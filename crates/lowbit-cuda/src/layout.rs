//! The device layout of a weight matrix, built once on the host at load time.
//!
//! Every format is stored as rows of 16-byte chunks (`ld` chunks per row, the tail zero-padded),
//! so one lane of a warp reads one chunk with one 128-bit load and a warp reads 512 contiguous
//! bytes of a row: 32 INT4 codes, 16 INT8 codes, 8 f16/bf16 or 4 f32 values per chunk. The codes
//! keep lowbit's order (element `2j` in the low nibble of byte `j`, docs/format.md), so a row
//! whose width is a multiple of 32 is a plain copy of lowbit's bytes.
//!
//! Quantized formats carry one `(scale, zero)` pair per (row, group), `[rows][groups]`,
//! `w = (q - zero) * scale` (the implied zero of symmetric tensors is stored explicitly, so one
//! kernel serves both). The pair is two f16 when the checkpoint's scales are f16 (a zero point is
//! an integer, exact in f16) and two f32 otherwise, so no scale is rounded.
//!
//! The fast kernels need every 16-byte chunk inside one group: the group size a multiple of the
//! chunk's element count, or one group per row. Other integer layouts (a group of 16 at 4 bits),
//! 2- and 3-bit codes and the NF4/FP4 codebooks are dequantized to f32 here instead: correct, but
//! 8x the bytes of INT4 (a known gap, see the crate docs).

use crate::CudaError;
use half::f16;
use lowbit_core::backend::HostWeight;
use lowbit_core::{Bits, Granularity, QParams, Scales, Scheme};

/// Storage format on the device; the value is the kernels' `FMT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Dense f32.
    F32 = 0,
    /// Dense f16.
    F16 = 1,
    /// Dense bf16.
    Bf16 = 2,
    /// 4-bit integer codes with (scale, zero) per group.
    Int4 = 3,
    /// 8-bit integer codes with (scale, zero) per group.
    Int8 = 4,
}

impl Format {
    /// Elements in one 16-byte chunk.
    pub fn per_chunk(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::F16 | Format::Bf16 => 8,
            Format::Int4 => 32,
            Format::Int8 => 16,
        }
    }
    /// A short name (kernel suffixes, messages).
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::Bf16 => "bf16",
            Format::Int4 => "w4",
            Format::Int8 => "w8",
        }
    }
}

/// Per-group `(scale, zero)` pairs, interleaved, `[rows][groups]`.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupParams {
    /// Dense formats have none.
    None,
    /// f16 bit patterns.
    Half(Vec<u16>),
    /// f32 values.
    Float(Vec<f32>),
}

/// A weight matrix in the device layout, still on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    /// Storage format.
    pub format: Format,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// 16-byte chunks per row.
    pub ld: usize,
    /// `rows * ld * 16` bytes.
    pub data: Vec<u8>,
    /// Group parameters (quantized formats).
    pub params: GroupParams,
    /// Elements per group along a row (`cols` rounded up to a chunk when one group spans the row).
    pub group: usize,
    /// Groups per row.
    pub groups: usize,
}

impl Packed {
    /// Bytes of the row stride.
    pub fn row_bytes(&self) -> usize {
        self.ld * 16
    }

    /// Bytes the device holds for this weight (codes and parameters).
    pub fn device_bytes(&self) -> usize {
        self.data.len()
            + match &self.params {
                GroupParams::None => 0,
                GroupParams::Half(v) => v.len() * 2,
                GroupParams::Float(v) => v.len() * 4,
            }
    }

    /// Lays out `w` (`[rows, cols]`) for the device.
    pub fn from_host(rows: usize, cols: usize, w: HostWeight<'_>) -> Result<Packed, CudaError> {
        let n = rows.checked_mul(cols).ok_or_else(|| CudaError::Shape(format!("{rows} x {cols} overflows")))?;
        let check = |len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(CudaError::Shape(format!("a {rows} x {cols} weight needs {n} values, got {len}")))
            }
        };
        match w {
            HostWeight::F32(v) => {
                check(v.len())?;
                Ok(Self::dense(Format::F32, rows, cols, v.iter().flat_map(|x| x.to_le_bytes())))
            }
            HostWeight::F16(v) => {
                check(v.len())?;
                Ok(Self::dense(Format::F16, rows, cols, v.iter().flat_map(|x| x.to_bits().to_le_bytes())))
            }
            HostWeight::Bf16(v) => {
                check(v.len())?;
                Ok(Self::dense(Format::Bf16, rows, cols, v.iter().flat_map(|x| x.to_bits().to_le_bytes())))
            }
            HostWeight::Quant(q) => {
                let (qr, qc) = q.matrix_dims();
                if (qr, qc) != (rows, cols) {
                    return Err(CudaError::Shape(format!(
                        "a {rows} x {cols} weight got a quantized tensor of {qr} x {qc}"
                    )));
                }
                if let Some(p) = Self::quantized(rows, cols, q) {
                    return Ok(p);
                }
                let deq = q.dequantize();
                Ok(Self::dense(Format::F32, rows, cols, deq.iter().flat_map(|x| x.to_le_bytes())))
            }
        }
    }

    /// Dense values (little-endian bytes of `cols` elements per row) into padded rows.
    fn dense(format: Format, rows: usize, cols: usize, bytes: impl Iterator<Item = u8>) -> Packed {
        let size = 16 / format.per_chunk();
        let ld = cols.div_ceil(format.per_chunk());
        let mut data = vec![0u8; rows * ld * 16];
        let row_len = cols * size;
        let mut it = bytes;
        for r in 0..rows {
            let dst = &mut data[r * ld * 16..r * ld * 16 + row_len];
            for (d, b) in dst.iter_mut().zip(&mut it) {
                *d = b;
            }
        }
        Packed { format, rows, cols, ld, data, params: GroupParams::None, group: cols.max(1), groups: 1 }
    }

    /// INT4/INT8 with chunk-aligned groups, or `None` when the layout needs the f32 fallback.
    fn quantized(rows: usize, cols: usize, q: &lowbit_core::QTensor) -> Option<Packed> {
        let Scheme::Int(s) = q.scheme() else { return None };
        let format = match s.bits {
            Bits::B4 => Format::Int4,
            Bits::B8 => Format::Int8,
            _ => return None,
        };
        let QParams::Int { scales, zeros } = q.params() else { return None };
        let e = format.per_chunk();
        let ld = cols.div_ceil(e);
        let (group, groups) = match s.granularity {
            Granularity::Group(g) if g < cols => {
                if g % e != 0 {
                    return None;
                }
                (g, cols.div_ceil(g))
            }
            // One group spans the row: any chunk index maps to group 0.
            _ => (ld * e, 1),
        };
        let mut codes = vec![0u8; rows * cols];
        lowbit_core::pack::unpack_into(q.codes(), s.bits, &mut codes);
        let mut data = vec![0u8; rows * ld * 16];
        for (r, row) in codes.chunks_exact(cols.max(1)).enumerate().take(rows) {
            let dst = &mut data[r * ld * 16..(r + 1) * ld * 16];
            match format {
                Format::Int4 => {
                    for (k, &c) in row.iter().enumerate() {
                        dst[k / 2] |= (c & 15) << (4 * (k % 2));
                    }
                }
                _ => dst[..cols].copy_from_slice(row),
            }
        }
        let implied = f32::from(s.bits.maxq() / 2 + 1);
        let pair = |r: usize, gi: usize| {
            let i = s.granularity.param_index(cols, r * cols + (gi * group).min(cols.saturating_sub(1)));
            let z = zeros.as_ref().map_or(implied, |z| z.get(i));
            (i, z)
        };
        let params = match scales {
            Scales::F16(sc) => {
                let mut v = Vec::with_capacity(rows * groups * 2);
                for r in 0..rows {
                    for gi in 0..groups {
                        let (i, z) = pair(r, gi);
                        v.push(sc[i].to_bits());
                        v.push(f16::from_f32(z).to_bits());
                    }
                }
                GroupParams::Half(v)
            }
            Scales::F32(sc) => {
                let mut v = Vec::with_capacity(rows * groups * 2);
                for r in 0..rows {
                    for gi in 0..groups {
                        let (i, z) = pair(r, gi);
                        v.push(sc[i]);
                        v.push(z);
                    }
                }
                GroupParams::Float(v)
            }
        };
        Some(Packed { format, rows, cols, ld, data, params, group, groups })
    }

    /// Element `(r, k)` decoded from this layout the way the kernels do (`(q - zero) * scale`):
    /// the host-side oracle of the layout.
    pub fn element(&self, r: usize, k: usize) -> f32 {
        let row = &self.data[r * self.row_bytes()..];
        let word = |size: usize| {
            let b = &row[k * size..k * size + size];
            b.iter().rev().fold(0u32, |a, &x| (a << 8) | u32::from(x))
        };
        let q = match self.format {
            Format::F32 => return f32::from_bits(word(4)),
            Format::F16 => return f16::from_bits(word(2) as u16).to_f32(),
            Format::Bf16 => return f32::from_bits(word(2) << 16),
            Format::Int4 => f32::from((row[k / 2] >> (4 * (k % 2))) & 15),
            Format::Int8 => f32::from(row[k]),
        };
        let i = 2 * (r * self.groups + k / self.group);
        let (s, z) = match &self.params {
            GroupParams::Half(v) => (f16::from_bits(v[i]).to_f32(), f16::from_bits(v[i + 1]).to_f32()),
            GroupParams::Float(v) => (v[i], v[i + 1]),
            GroupParams::None => (1.0, 0.0),
        };
        (q - z) * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_core::{rtn, ClipSearch, IntScheme, ScaleDtype};

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn check_quant(rows: usize, cols: usize, bits: Bits, sym: bool, gran: Granularity, dtype: ScaleDtype) -> Format {
        let w = weights(rows * cols, (rows * 31 + cols) as u64);
        let scheme =
            IntScheme { bits, symmetric: sym, granularity: gran, scale_dtype: dtype, clip: ClipSearch::MinMax };
        let q = rtn::quantize(&w, &[rows, cols], scheme).unwrap();
        let want = q.dequantize();
        let p = Packed::from_host(rows, cols, HostWeight::Quant(&q)).unwrap();
        assert_eq!(p.data.len(), rows * p.ld * 16);
        for r in 0..rows {
            for k in 0..cols {
                assert_eq!(p.element(r, k), want[r * cols + k], "{rows}x{cols} {bits:?} sym={sym} {gran:?} ({r},{k})");
            }
        }
        p.format
    }

    #[test]
    fn quantized_layouts_decode_to_the_reference() {
        for (rows, cols) in [(3, 128), (5, 200), (7, 576), (2, 33), (1, 1)] {
            for sym in [false, true] {
                for dtype in [ScaleDtype::F16, ScaleDtype::F32] {
                    for gran in [
                        Granularity::Group(128),
                        Granularity::Group(32),
                        Granularity::PerChannel,
                        Granularity::PerTensor,
                    ] {
                        assert_eq!(check_quant(rows, cols, Bits::B4, sym, gran, dtype), Format::Int4);
                        assert_eq!(check_quant(rows, cols, Bits::B8, sym, gran, dtype), Format::Int8);
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_layouts_fall_back_to_exact_f32() {
        // A 4-bit group of 16 splits a 32-code chunk; 3-bit codes have no kernel.
        assert_eq!(check_quant(3, 64, Bits::B4, false, Granularity::Group(16), ScaleDtype::F16), Format::F32);
        assert_eq!(check_quant(3, 256, Bits::B3, false, Granularity::Group(128), ScaleDtype::F16), Format::F32);
    }

    #[test]
    fn dense_layouts_pad_rows_to_whole_chunks() {
        let (rows, cols) = (3, 13);
        let w = weights(rows * cols, 9);
        let h: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
        let b: Vec<half::bf16> = w.iter().map(|&x| half::bf16::from_f32(x)).collect();
        for (p, want) in [
            (Packed::from_host(rows, cols, HostWeight::F32(&w)).unwrap(), w.clone()),
            (Packed::from_host(rows, cols, HostWeight::F16(&h)).unwrap(), h.iter().map(|x| x.to_f32()).collect()),
            (Packed::from_host(rows, cols, HostWeight::Bf16(&b)).unwrap(), b.iter().map(|x| x.to_f32()).collect()),
        ] {
            assert_eq!(p.row_bytes() % 16, 0);
            for r in 0..rows {
                for k in 0..cols {
                    assert_eq!(p.element(r, k), want[r * cols + k], "{:?} ({r},{k})", p.format);
                }
            }
        }
        assert!(matches!(Packed::from_host(2, 3, HostWeight::F32(&w[..5])), Err(CudaError::Shape(_))));
    }
}
