//! The vocabulary of a layer, shared by every other module and depending on none of them:
//! its [`Shape`] and [`Kind`], the [`Density`] it is asked for and the [`Gain`] it is scaled
//! by, the convolution rules of delta-orthogonal EOI ([`CentreRule`], [`ConvMask`]), how
//! densities are spread ([`Distribution`], [`BelowMinimum`]) and where they came from
//! ([`Origin`]), and how tensors are stored ([`Dtype`], [`Layout`], [`Names`], [`Format`]).
//!
//! Every named value is declared once with [`named!`], which gives it its spelling in specs,
//! records and on the command line, its parser, and what clap needs to offer it as a value.

use std::fmt;

/// Declares an enum whose values have names: `NAMES` (in order), `name()`, `parse()`,
/// `Display`, `clap::ValueEnum`, and serde and JSON Schema as a string of `NAMES`, so specs,
/// records, JSON outputs, messages and the command line spell each value the same way from
/// this one declaration.
macro_rules! named {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order of [`Self::NAMES`].
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every value's name, as specs, records and the command line spell it.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// This value's name.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value named `text`, if there is one.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                $name::parse(&text)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&text, Self::NAMES))
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": Self::NAMES })
            }
        }
    };
}
pub(crate) use named;

/// A density in (0, 1].
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Density(f64);

impl Density {
    pub fn new(value: f64) -> Option<Density> {
        (value > 0.0 && value <= 1.0).then_some(Density(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// Whether `density` is below `minimum` beyond rounding noise (a relative 1e-12): how every
/// density is held against a scheme's minimum.
pub fn below(density: f64, minimum: f64) -> bool {
    density < minimum * (1.0 - 1e-12)
}

named! {
    /// How the overall density is spread over the layers.
    pub enum Distribution {
        Uniform = "uniform",
        /// Erdos-Renyi-Kernel (RigL): raw density (sum of dims / product of dims)^power.
        Erk = "erk",
        /// Erdos-Renyi: raw density (out + in) / (out * in).
        Er = "er",
    }
}

named! {
    /// What to do with a layer density below what its scheme can make.
    pub enum BelowMinimum {
        Error = "error",
        Clamp = "clamp",
    }
}

named! {
    /// Why a layer has its density.
    pub enum Origin {
        /// Its share of the overall density under the distribution.
        Distributed = "distributed",
        /// The layer's own `density` key.
        Fixed = "fixed",
        /// A `dense` pattern matched it.
        Dense = "dense",
        /// ERK or ER asked for more than 1, so it was made dense and the rest re-balanced.
        Capped = "capped",
        /// It was below what its scheme can make and `below_minimum = "clamp"` raised it.
        Clamped = "clamped",
        /// Its N:M pattern: N/M, the most such a layer holds (counts against the budget).
        Nm = "nm",
    }
}

named! {
    /// How the density of a convolution's centre matrix follows from the layer's density
    /// (`conv_center`).
    pub enum CentreRule {
        /// `d_H = min(d * K, 1, sqrt(d))`: the paper's setting for contemporary networks.
        Sqrt = "sqrt",
        /// `d_H = d`: the paper's 1000-layer CNN.
        Same = "same",
    }
}

impl CentreRule {
    /// The density of the centre matrix H of a layer of density `density` with `taps` taps.
    pub fn centre_density(self, density: f64, taps: usize) -> f64 {
        match self {
            CentreRule::Same => density,
            CentreRule::Sqrt => (density * taps as f64).min(1.0).min(density.sqrt()),
        }
    }
}

named! {
    /// Which positions of a kernel its mask keeps besides the centre matrix's support
    /// (`conv_mask`).
    pub enum ConvMask {
        /// The centre's support at the centre tap, topped up with uniform positions anywhere
        /// in the tensor to the layer's density.
        TopUp = "top-up",
        /// The whole kernel slice (all K taps) of every channel pair the centre matrix
        /// connects, with `d_H = d`, so that the tensor keeps `centre_nnz * K` ones.
        Structured = "structured",
    }
}

named! {
    /// How an artifact is stored.
    pub enum Format {
        /// One .safetensors file (or a directory of shards with an index).
        Safetensors = "safetensors",
        /// A directory of .npy files and a manifest (or one .npy file, when read).
        Npy = "npy",
        /// One .npz archive: stored .npy members and a manifest.
        Npz = "npz",
    }
}

named! {
    /// How the output tensors are named.
    #[derive(Default)]
    pub enum Names {
        /// Each weight under its layer's name, its mask under the name plus `mask_suffix`.
        #[default]
        Plain = "plain",
        /// What `torch.nn.utils.prune` keeps in a state dict: for a parameter
        /// `<module>.<param>`, `<module>.<param>_orig` and `<module>.<param>_mask` (the mask in
        /// the weight's dtype).
        TorchPrune = "torch-prune",
    }
}

named! {
    /// The order of a weight's dimensions in a file.
    #[derive(Default)]
    pub enum Layout {
        /// PyTorch: linear (out, in), convolution (out, in, k...). The order the schemes work in.
        #[default]
        Torch = "torch",
        /// Flax/JAX: Dense kernels (in, out), convolution kernels (k..., in, out) (HWIO in 2-D).
        Flax = "flax",
    }
}

impl Layout {
    /// The shape in this layout of a tensor whose PyTorch shape is `dims` ([out, in, k...]).
    pub fn shape(self, dims: &[usize]) -> Vec<usize> {
        match self {
            Layout::Torch => dims.to_vec(),
            Layout::Flax => {
                let mut shape = dims[2..].to_vec();
                shape.extend([dims[1], dims[0]]);
                shape
            }
        }
    }

    /// The PyTorch shape ([out, in, k...]) of a tensor stored as `dims` in this layout: the
    /// inverse of [`Layout::shape`], for shapes read from a checkpoint. `dims` has at least
    /// two dimensions.
    pub fn torch_shape(self, dims: &[usize]) -> Vec<usize> {
        match self {
            Layout::Torch => dims.to_vec(),
            Layout::Flax => {
                let n = dims.len();
                let mut shape = vec![dims[n - 1], dims[n - 2]];
                shape.extend_from_slice(&dims[..n - 2]);
                shape
            }
        }
    }

    /// The values of a tensor stored as `stored` (row-major, this layout's shape) in PyTorch
    /// order (out, in, k...): the inverse of what the writer's Flax view does, for the
    /// readers that measure a layer as it acts. `values` must hold the product of `stored`
    /// elements; a tensor of rank below 2 (a bias) is the same in every layout.
    pub fn torch_order<T: Copy>(self, values: Vec<T>, stored: &[usize]) -> Vec<T> {
        if self == Layout::Torch || stored.len() < 2 {
            return values;
        }
        let n = stored.len();
        let (inp, out) = (stored[n - 2], stored[n - 1]);
        let taps: usize = stored[..n - 2].iter().product();
        let mut torch = Vec::with_capacity(values.len());
        for o in 0..out {
            for i in 0..inp {
                torch.extend((0..taps).map(|t| values[(t * inp + i) * out + o]));
            }
        }
        torch
    }
}

named! {
    /// Element types of stored tensors: every type a safetensors file or an .npy file may
    /// hold. eoi writes weights as [`Dtype::WEIGHTS`] and masks as [`Dtype::MASKS`] (or, with
    /// torch-prune names, the weight's dtype), and reads any of them.
    pub enum Dtype {
        Bool = "bool",
        U8 = "u8",
        I8 = "i8",
        U16 = "u16",
        I16 = "i16",
        U32 = "u32",
        I32 = "i32",
        U64 = "u64",
        I64 = "i64",
        /// 8-bit float with 4 exponent and 3 mantissa bits, no infinities (`F8_E4M3`, "e4m3fn").
        F8E4M3 = "f8_e4m3",
        /// 8-bit float with 5 exponent and 2 mantissa bits (`F8_E5M2`).
        F8E5M2 = "f8_e5m2",
        /// IEEE 754 binary16.
        F16 = "f16",
        /// bfloat16: the top half of an f32 (8 exponent bits, 7 fraction bits).
        BF16 = "bf16",
        F32 = "f32",
        F64 = "f64",
    }
}

impl Dtype {
    /// The dtypes eoi writes weights (and biases) in, as specs and the command line name them.
    pub const WEIGHTS: &'static [Dtype] = &[Dtype::F32, Dtype::F64, Dtype::F16, Dtype::BF16];

    /// The dtypes eoi writes masks in under plain names.
    pub const MASKS: &'static [Dtype] = &[Dtype::Bool, Dtype::U8, Dtype::F32];

    /// The names of [`Dtype::WEIGHTS`], as specs and the command line spell them.
    pub const WEIGHT_NAMES: &'static [&'static str] = &["f32", "f64", "f16", "bf16"];

    /// The names of [`Dtype::MASKS`].
    pub const MASK_NAMES: &'static [&'static str] = &["bool", "u8", "f32"];

    /// A weight dtype by its name.
    pub fn weight(name: &str) -> Option<Dtype> {
        Dtype::parse(name).filter(|d| Dtype::WEIGHTS.contains(d))
    }

    /// A mask dtype (of plain names) by its name.
    pub fn mask(name: &str) -> Option<Dtype> {
        Dtype::parse(name).filter(|d| Dtype::MASKS.contains(d))
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// The dtype string of a safetensors header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
        }
    }

    /// The dtype of a safetensors header's dtype string.
    pub fn from_safetensors(name: &str) -> Option<Dtype> {
        Dtype::ALL
            .iter()
            .copied()
            .find(|d| d.safetensors_name() == name)
    }

    /// The `descr` of a NumPy .npy header (little-endian); `None` for the types NumPy has
    /// no dtype for (bf16 and the 8-bit floats).
    pub fn npy_descr(self) -> Option<&'static str> {
        Some(match self {
            Dtype::Bool => "|b1",
            Dtype::U8 => "|u1",
            Dtype::I8 => "|i1",
            Dtype::U16 => "<u2",
            Dtype::I16 => "<i2",
            Dtype::U32 => "<u4",
            Dtype::I32 => "<i4",
            Dtype::U64 => "<u8",
            Dtype::I64 => "<i8",
            Dtype::F16 => "<f2",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::BF16 | Dtype::F8E4M3 | Dtype::F8E5M2 => return None,
        })
    }

    /// The dtype of an .npy `descr`. Byte-sized types may say `|`, `<` or `=`; wider ones
    /// must be little-endian (`<`).
    pub fn from_npy(descr: &str) -> Option<Dtype> {
        let (order, code) = descr.split_at_checked(1)?;
        let dtype = match code {
            "b1" => Dtype::Bool,
            "u1" => Dtype::U8,
            "i1" => Dtype::I8,
            "u2" => Dtype::U16,
            "i2" => Dtype::I16,
            "u4" => Dtype::U32,
            "i4" => Dtype::I32,
            "u8" => Dtype::U64,
            "i8" => Dtype::I64,
            "f2" => Dtype::F16,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return None,
        };
        let ok = match order {
            "<" => true,
            "|" | "=" => dtype.size() == 1,
            _ => false,
        };
        ok.then_some(dtype)
    }

    /// Whether the type holds floating-point numbers.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
        )
    }

    /// The unit roundoff of a float type (half the distance from 1 to the next number).
    pub fn unit_roundoff(self) -> Option<f64> {
        let mantissa_bits = match self {
            Dtype::F8E4M3 => 3,
            Dtype::F8E5M2 => 2,
            Dtype::F16 => 10,
            Dtype::BF16 => 7,
            Dtype::F32 => 23,
            Dtype::F64 => 52,
            _ => return None,
        };
        Some(libm::ldexp(1.0, -(mantissa_bits + 1)))
    }
}

/// A gain: the factor the orthogonal matrix is multiplied by.
#[derive(Clone, Debug, PartialEq)]
pub struct Gain {
    pub value: f64,
    /// The nonlinearity it came from, if it was given by name.
    pub nonlinearity: Option<String>,
}

impl Gain {
    /// Names accepted for a gain, with PyTorch's `calculate_gain` values.
    pub const NAMES: &'static [&'static str] = &[
        "linear",
        "conv1d",
        "conv2d",
        "conv3d",
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "selu",
    ];

    pub fn number(value: f64) -> Option<Gain> {
        (value.is_finite() && value > 0.0).then_some(Gain {
            value,
            nonlinearity: None,
        })
    }

    /// PyTorch's `torch.nn.init.calculate_gain` for `name` (leaky_relu with slope 0.01).
    pub fn named(name: &str) -> Option<Gain> {
        let value = match name {
            "linear" | "conv1d" | "conv2d" | "conv3d" | "sigmoid" => 1.0,
            "tanh" => 5.0 / 3.0,
            "relu" => 2.0f64.sqrt(),
            "leaky_relu" => (2.0 / (1.0 + 0.01f64 * 0.01)).sqrt(),
            "selu" => 0.75,
            _ => return None,
        };
        Some(Gain {
            value,
            nonlinearity: Some(name.to_string()),
        })
    }

    /// The gain 1, the default.
    pub fn one() -> Gain {
        Gain {
            value: 1.0,
            nonlinearity: None,
        }
    }
}

named! {
    /// Whether a layer is a matrix or a convolution kernel.
    pub enum Kind {
        Linear = "linear",
        Conv = "conv",
    }
}

/// The flattened index of a kernel's centre tap, `(k - 1) / 2` in every spatial dimension,
/// in row-major order over the kernel dimensions (0 for a linear layer's empty kernel).
pub fn centre_tap(kernel: &[usize]) -> usize {
    kernel.iter().fold(0, |index, &k| index * k + (k - 1) / 2)
}

/// How many ones of a convolution's mask `bits` (PyTorch order, (out, in, k...), one byte an
/// element) lie at the centre tap of its kernel of shape `kernel`.
pub fn ones_at_centre(bits: &[u8], kernel: &[usize]) -> u64 {
    let taps: usize = kernel.iter().product();
    bits.iter()
        .skip(centre_tap(kernel))
        .step_by(taps.max(1))
        .filter(|&&b| b != 0)
        .count() as u64
}

/// A weight shape in PyTorch order: (out, in) for linear layers, (out, in, k...) for
/// convolutions with 1 to 3 spatial dimensions. Every dimension is at least 1 and the
/// number of elements fits in memory addressing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// Validates a shape; the error says what is wrong with it.
    pub fn new(dims: &[i64]) -> Result<Shape, String> {
        if !(2..=5).contains(&dims.len()) {
            return Err(format!(
                "a weight shape has 2 dimensions (linear: out, in) or 3 to 5 (conv: out, in, k...), got {} ({:?})",
                dims.len(),
                dims
            ));
        }
        let mut out = Vec::with_capacity(dims.len());
        let mut numel: u64 = 1;
        for &d in dims {
            if d < 1 {
                return Err(format!("every dimension must be at least 1, got {dims:?}"));
            }
            numel = numel
                .checked_mul(d as u64)
                .filter(|&n| n <= isize::MAX as u64 / 8)
                .ok_or_else(|| format!("shape {dims:?} has more elements than can be addressed"))?;
            out.push(d as usize);
        }
        Ok(Shape(out))
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn out(&self) -> usize {
        self.0[0]
    }

    pub fn inp(&self) -> usize {
        self.0[1]
    }

    /// The spatial dimensions (empty for linear layers).
    pub fn kernel(&self) -> &[usize] {
        &self.0[2..]
    }

    /// The number of spatial taps K (1 for linear layers).
    pub fn taps(&self) -> usize {
        self.kernel().iter().product()
    }

    pub fn numel(&self) -> u64 {
        self.0.iter().map(|&d| d as u64).product()
    }

    /// The fan-in `in * K` (K taps; 1 for linear layers), as Kaiming's std uses it: the one
    /// place it is computed. `in` is the shape's second dimension, which for a grouped
    /// convolution is already in/G (PyTorch's storage): the inputs one output sees.
    pub fn fan_in(&self) -> usize {
        self.inp() * self.taps()
    }

    pub fn kind(&self) -> Kind {
        if self.0.len() == 2 {
            Kind::Linear
        } else {
            Kind::Conv
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        write!(f, "{}", parts.join("x"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        fn round_trip<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            names: &[&str],
            name: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            assert_eq!(all.len(), names.len());
            for (&value, &text) in all.iter().zip(names) {
                assert_eq!(name(value), text);
                assert_eq!(parse(text), Some(value));
            }
            assert_eq!(parse("no-such-name"), None);
        }
        round_trip(Dtype::ALL, Dtype::NAMES, Dtype::name, Dtype::parse);
        round_trip(Layout::ALL, Layout::NAMES, Layout::name, Layout::parse);
        round_trip(Names::ALL, Names::NAMES, Names::name, Names::parse);
        round_trip(Format::ALL, Format::NAMES, Format::name, Format::parse);
        round_trip(
            ConvMask::ALL,
            ConvMask::NAMES,
            ConvMask::name,
            ConvMask::parse,
        );
        round_trip(
            CentreRule::ALL,
            CentreRule::NAMES,
            CentreRule::name,
            CentreRule::parse,
        );
    }

    #[test]
    fn dtypes_know_their_safetensors_and_npy_names() {
        for &d in Dtype::ALL {
            assert_eq!(Dtype::from_safetensors(d.safetensors_name()), Some(d));
            if let Some(descr) = d.npy_descr() {
                assert_eq!(Dtype::from_npy(descr), Some(d));
            }
        }
        assert_eq!(Dtype::from_npy(">f4"), None);
        let names = |ds: &[Dtype]| ds.iter().map(|d| d.name()).collect::<Vec<_>>();
        assert_eq!(names(Dtype::WEIGHTS), Dtype::WEIGHT_NAMES);
        assert_eq!(names(Dtype::MASKS), Dtype::MASK_NAMES);
        assert_eq!(Dtype::weight("bf16"), Some(Dtype::BF16));
        assert_eq!(Dtype::weight("bool"), None);
        assert_eq!(Dtype::mask("u8"), Some(Dtype::U8));
        assert_eq!(Dtype::from_npy("=u1"), Some(Dtype::U8));
    }

    #[test]
    fn torch_shape_inverts_the_flax_shape() {
        assert_eq!(Layout::Flax.shape(&[64, 3, 7, 5]), [7, 5, 3, 64]);
        assert_eq!(Layout::Flax.torch_shape(&[7, 5, 3, 64]), [64, 3, 7, 5]);
        assert_eq!(Layout::Flax.torch_shape(&[784, 300]), [300, 784]);
        for dims in [
            vec![3, 4],
            vec![8, 2, 3],
            vec![6, 5, 3, 3],
            vec![2, 3, 4, 5, 6],
        ] {
            for layout in [Layout::Torch, Layout::Flax] {
                assert_eq!(layout.torch_shape(&layout.shape(&dims)), dims);
            }
        }
    }

    #[test]
    fn centre_tap_is_the_middle_of_every_dimension() {
        assert_eq!(centre_tap(&[3]), 1);
        assert_eq!(centre_tap(&[3, 3]), 4);
        assert_eq!(centre_tap(&[5, 5]), 12);
        // Even kernels take (k - 1) / 2: index 1 of 4.
        assert_eq!(centre_tap(&[4, 4]), 5);
        assert_eq!(centre_tap(&[3, 3, 3]), 13);
        assert_eq!(centre_tap(&[1, 1]), 0);
    }

    #[test]
    fn the_sqrt_rule_puts_more_of_the_density_in_the_centre() {
        assert_eq!(CentreRule::Sqrt.centre_density(0.1, 9), 0.1f64.sqrt());
        assert!((CentreRule::Sqrt.centre_density(0.01, 9) - 0.09).abs() < 1e-15);
        assert_eq!(CentreRule::Same.centre_density(0.01, 9), 0.01);
    }
}
