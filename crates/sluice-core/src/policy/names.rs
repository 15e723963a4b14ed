//! The policy's names as numbers: ids of models, endpoints, tiers and
//! limits, interned strings ([`Sym`]), and the stable hash of a name that
//! counter identities are built from.

use std::collections::HashMap;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// As an index.
            pub const fn index(self) -> usize { self.0 as usize }
        }
    };
}

id_type!(
    /// A model of the policy.
    ModelId
);
id_type!(
    /// An endpoint of the policy.
    EndpointId
);
id_type!(
    /// A tier of the policy.
    TierId
);
id_type!(
    /// A limit of the policy.
    LimitId
);

/// A string interned by the policy; `Sym::NONE` stands for any string no
/// condition mentions (it matches no condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sym(pub u32);

impl Sym {
    /// A value no condition mentions.
    pub const NONE: Sym = Sym(u32::MAX);
}

/// Strings of one domain, numbered.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    index: HashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let sym = Sym(u32::try_from(self.names.len()).unwrap_or(u32::MAX - 1));
        self.index.insert(s.into(), sym);
        self.names.push(s.into());
        sym
    }

    pub(crate) fn get(&self, s: &str) -> Sym {
        self.index.get(s).copied().unwrap_or(Sym::NONE)
    }

    pub(crate) fn name(&self, sym: Sym) -> &str {
        self.names.get(sym.0 as usize).map_or("?", |s| s)
    }
}

/// A stable 64-bit hash of a name (xxh3; part of counter identities, so it
/// must never change between versions).
pub fn name_hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}
