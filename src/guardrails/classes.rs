//! Data classes: what a request may carry (`public` < `internal` < `pii` < `phi`, though a
//! set, not a level: a deployment cleared for `phi` is not thereby cleared for `pii`) and
//! what a deployment may receive.

use std::fmt;

/// One class of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataClass {
    /// Fit for anyone.
    Public,
    /// The company's own, not personal.
    Internal,
    /// Personal data (names with contact details, card numbers, national ids).
    Pii,
    /// Health data.
    Phi,
}

impl DataClass {
    /// Every class.
    pub const ALL: [DataClass; 4] = [
        DataClass::Public,
        DataClass::Internal,
        DataClass::Pii,
        DataClass::Phi,
    ];

    /// The policy name.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Internal => "internal",
            DataClass::Pii => "pii",
            DataClass::Phi => "phi",
        }
    }

    /// By policy name.
    pub fn parse(s: &str) -> Option<DataClass> {
        DataClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of classes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClassSet(u8);

impl ClassSet {
    /// No class.
    pub const EMPTY: ClassSet = ClassSet(0);
    /// `public` and `internal`: what a deployment receives unless the policy clears it for more.
    pub const PUBLIC_INTERNAL: ClassSet = ClassSet(0b11);

    /// A set of these classes.
    pub fn of(classes: &[DataClass]) -> ClassSet {
        classes.iter().fold(ClassSet::EMPTY, |s, c| s.with(*c))
    }

    /// This set and `c`.
    #[must_use]
    pub fn with(self, c: DataClass) -> ClassSet {
        ClassSet(self.0 | c.bit())
    }

    /// Does it hold `c`?
    pub fn contains(self, c: DataClass) -> bool {
        self.0 & c.bit() != 0
    }

    /// Does it hold every class of `other`?
    pub fn covers(self, other: ClassSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// The classes, in order.
    pub fn iter(self) -> impl Iterator<Item = DataClass> {
        DataClass::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// The classes of `other` this set lacks.
    pub fn missing(self, other: ClassSet) -> ClassSet {
        ClassSet(other.0 & !self.0)
    }

    /// Is it empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(DataClass::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{self}]")
    }
}
