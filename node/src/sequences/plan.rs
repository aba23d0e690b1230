//! Sequences as data: a plan is decided once, before anything runs, and
//! says which steps a sequence runs, which it skips (and why), and which
//! run side by side.
//!
//! A plan is a list of [`Phase`]s run one after another; a phase holds one
//! or more lanes run concurrently; a lane is a list of steps run in order.
//! Two steps share a phase only when neither needs the other's result.
//!
//! Each sequence has its own closed step type, declared with [`steps!`],
//! so its dispatch is an exhaustive match over its own steps only.

use std::fmt::{Debug, Display};
use std::hash::Hash;

/// One named step of a sequence. Names are stable: they are what
/// failpoints, progress lines, `-o json` and scripts see, and what
/// records on disk hold, so a name is never changed once released.
pub trait Step: Copy + Eq + Hash + Debug + Display + Send + Sync + 'static {
    /// Every step, in the order a full plan runs them.
    const ALL: &'static [Self];
    /// The step's stable name (`verb_noun`).
    fn name(self) -> &'static str;
}

/// A name that no step of the sequence has.
#[derive(Debug, thiserror::Error)]
#[error("no step is named {0:?}")]
pub struct UnknownStep(pub String);

/// Declares a sequence's step enum and its name table in one place, so a
/// step cannot exist without a stable name.
macro_rules! steps {
    ($(#[$meta:meta])* $vis:vis enum $E:ident {
        $($(#[$doc:meta])* $variant:ident => $name:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(into = "&'static str")]
        $vis enum $E {
            $($(#[$doc])* $variant,)+
        }

        impl $crate::sequences::plan::Step for $E {
            const ALL: &'static [$E] = &[$($E::$variant,)+];
            fn name(self) -> &'static str {
                match self {
                    $($E::$variant => $name,)+
                }
            }
        }

        impl From<$E> for &'static str {
            fn from(s: $E) -> &'static str {
                $crate::sequences::plan::Step::name(s)
            }
        }

        impl std::fmt::Display for $E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::sequences::plan::Step::name(*self))
            }
        }

        impl std::str::FromStr for $E {
            type Err = $crate::sequences::plan::UnknownStep;
            fn from_str(s: &str) -> Result<$E, Self::Err> {
                <$E as $crate::sequences::plan::Step>::ALL
                    .iter()
                    .copied()
                    .find(|step| $crate::sequences::plan::Step::name(*step) == s)
                    .ok_or_else(|| $crate::sequences::plan::UnknownStep(s.to_string()))
            }
        }
    };
}
pub(crate) use steps;

/// Whether a planned step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Check, apply if needed, check again.
    Run,
    /// Not run; the reason is printed in its progress line.
    Skip(&'static str),
}

/// One step in a plan with its number (1-based, in plan order: what the
/// `(i/n)` of its progress line shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned<S> {
    pub step: S,
    pub number: usize,
    pub action: Action,
}

/// Steps run concurrently with the other lanes of their phase; in order
/// within the lane.
pub type Lane<S> = Vec<Planned<S>>;

/// Lanes that run side by side; the next phase starts when all are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase<S> {
    pub lanes: Vec<Lane<S>>,
}

/// The steps a sequence takes on this host, decided before the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<S> {
    /// The sequence's name: the prefix of its progress lines (`[init]`).
    pub sequence: &'static str,
    pub phases: Vec<Phase<S>>,
}

impl<S: Step> Plan<S> {
    /// A plan of one lane, numbered in order; `None` actions are not part
    /// of the sequence at all.
    pub fn one_lane(sequence: &'static str, steps: &[(S, Option<Action>)]) -> Plan<S> {
        let mut b = Builder::default();
        let lane = b.lane(steps);
        Plan {
            sequence,
            phases: vec![Phase { lanes: vec![lane] }],
        }
    }

    /// Every step of `S`, in its declared order, each run: a sequence whose
    /// steps all observe first and skip nothing.
    pub fn every_step(sequence: &'static str) -> Plan<S> {
        let steps: Vec<(S, Option<Action>)> =
            S::ALL.iter().map(|s| (*s, Some(Action::Run))).collect();
        Plan::one_lane(sequence, &steps)
    }

    /// Every planned step (skipped ones included), in plan order.
    pub fn steps(&self) -> impl Iterator<Item = &Planned<S>> {
        let mut all: Vec<&Planned<S>> = self
            .phases
            .iter()
            .flat_map(|p| p.lanes.iter().flatten())
            .collect();
        all.sort_by_key(|p| p.number);
        all.into_iter()
    }

    /// How many steps the plan has: the `n` of `(i/n)`.
    pub fn len(&self) -> usize {
        self.phases
            .iter()
            .flat_map(|p| &p.lanes)
            .map(Vec::len)
            .sum()
    }

    /// Whether the plan has no step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The steps this plan runs (not skipped), in plan order.
    pub fn runs(&self) -> impl Iterator<Item = S> + '_ {
        self.steps()
            .filter(|p| p.action == Action::Run)
            .map(|p| p.step)
    }
}

/// Numbers the steps of a plan's lanes in the order the lanes are made.
#[derive(Default)]
pub struct Builder {
    number: usize,
}

impl Builder {
    /// One lane; `None` actions are left out.
    pub fn lane<S: Step>(&mut self, steps: &[(S, Option<Action>)]) -> Lane<S> {
        steps
            .iter()
            .filter_map(|(step, action)| {
                let action = (*action)?;
                self.number += 1;
                Some(Planned {
                    step: *step,
                    number: self.number,
                    action,
                })
            })
            .collect()
    }
}

/// `Run` or `Skip(why)`.
pub fn run_unless(skip: bool, why: &'static str) -> Action {
    if skip {
        Action::Skip(why)
    } else {
        Action::Run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    steps! {
        enum Demo {
            First => "first_step",
            Second => "second_step",
        }
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        for s in Demo::ALL {
            assert_eq!(s.name().parse::<Demo>().unwrap(), *s);
            assert_eq!(s.to_string(), s.name());
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        assert_eq!(
            "third".parse::<Demo>().unwrap_err().to_string(),
            "no step is named \"third\""
        );
    }

    #[test]
    fn a_lane_numbers_its_steps_and_leaves_out_what_is_not_part_of_it() {
        let p = Plan::one_lane(
            "demo",
            &[
                (Demo::First, None),
                (Demo::Second, Some(Action::Skip("why"))),
            ],
        );
        assert_eq!(p.len(), 1);
        let only = p.steps().next().unwrap();
        assert_eq!((only.step, only.number), (Demo::Second, 1));
        assert_eq!(p.runs().count(), 0);
    }
}
