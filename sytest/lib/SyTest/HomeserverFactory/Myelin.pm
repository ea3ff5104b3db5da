# Myelin's homeserver factory for sytest (see ../../../../README.md).
#
# Loaded by sytest's run-tests.pl with "-I Myelin" when this lib directory is
# on PERL5LIB; it makes one SyTest::Homeserver::Myelin per server sytest asks
# for.

use strict;
use warnings;

use File::Basename qw( dirname );
use Cwd qw( abs_path );

require SyTest::Homeserver::Myelin;

package SyTest::HomeserverFactory::Myelin;
use base qw( SyTest::HomeserverFactory );

sub _init
{
   my $self = shift;

   # Default binary: <repo>/bin/myelin, found from this file's location
   # (<repo>/sytest/lib/SyTest/HomeserverFactory/Myelin.pm).
   my $repo = Cwd::abs_path( File::Basename::dirname( __FILE__ ) . "/../../../.." );
   $self->{args} = {
      binary => "$repo/bin/myelin",
   };

   $self->SUPER::_init( @_ );
}

sub implementation_name
{
   return "myelin";
}

sub get_options
{
   my $self = shift;

   return (
      'myelin-binary=s' => \$self->{args}{binary},
      $self->SUPER::get_options(),
   );
}

sub print_usage
{
   print STDERR "   --myelin-binary PATH           - the myelin binary (default: <repo>/bin/myelin)\n";
}

sub create_server
{
   my $self = shift;
   my %params = ( @_, %{ $self->{args} } );

   return SyTest::Homeserver::Myelin->new( %params );
}

1;
