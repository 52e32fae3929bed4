//! Declarative macros shared by components.

/// Declares a struct of [`Counter`](crate::metrics::Counter)s and its
/// [`Observe`](crate::metrics::Observe) impl from one table: each counter's field, then its
/// metric name and help as `/metrics` shows them, in the order they are exported. A counter is
/// then declared in one place and cannot be left out of the exposition.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $field:ident: $metric:literal, $help:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( pub $field: $crate::metrics::Counter, )*
        }

        impl $crate::metrics::Observe for $name {
            fn observe(&self, out: &mut $crate::metrics::Samples) {
                $( out.counter($metric, $help, &[], self.$field.get()); )*
            }
        }
    };
}

pub(crate) use counters;
